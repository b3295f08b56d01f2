"""Keep the layout honest: packages by boundary, the dependency direction, vendors in their own
package only, no import cycle, small modules (see DESIGN.md's package table)."""

from __future__ import annotations

import ast
import graphlib
import re

import pytest

from .conftest import REPO

PACKAGE = REPO / "raytrain_orch"
PACKAGES = ("core", "store", "engine", "ray", "tracking", "cli")
#: Modules at the top: the public API (``from raytrain_orch import …``), ``python -m``, and the
#: ``ctx`` every step receives.
TOP_LEVEL = {"__init__", "__main__", "context"}
#: What each package may import of this project (its own modules always).
MAY_IMPORT = {
    "core": set(),
    "store": {"core"},
    "engine": {"core", "store", "context"},
    "ray": {"core", "store", "context"},
    "tracking": {"core", "store"},
    "cli": {"core", "store", "engine", "ray", "tracking", "context"},
}
#: Upward imports the engine may make: none. The composition root (``cli/wiring.py``, in the package
#: that may import every other) plugs Ray and MLflow in; the engine sees them through its ports.
WIRING: dict[str, set[str]] = {}
#: The system-metrics sampler (psutil, no MLflow) a train step's rank 0 runs.
CROSSINGS = {"ray.train": {"tracking"}}
HEAVY = {"ray", "mlflow", "torch"}
MAX_LINES = 350


def module_name(path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


MODULES = {module_name(path): path.read_text() for path in sorted(PACKAGE.rglob("*.py"))}


def imports(source: str, module: str = "") -> tuple[set[str], set[str]]:
    """(external top-level packages, this project's modules) that ``source`` imports.

    Every level counts: module top, functions, methods, ``if TYPE_CHECKING`` blocks, and
    ``importlib.import_module("x")`` / ``__import__("x")`` with a literal name. Relative imports
    resolve against ``module``'s package.
    """
    external: set[str] = set()
    internal: set[str] = set()
    package = module.rpartition(".")[0]

    def absolute(name: str, names: list[str]) -> None:
        head, _, rest = name.partition(".")
        if head != "raytrain_orch":
            external.add(head)
            return
        for target in [f"{rest}.{n}" if rest else n for n in names] or [rest]:
            internal.add(target if target in MODULES else rest)

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                absolute(alias.name, [])
        elif isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            if node.level == 0:
                absolute(node.module or "", names)
            else:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if package else ""
                dotted = ".".join(p for p in (base, node.module or "") if p)
                absolute(f"raytrain_orch.{dotted}".rstrip("."), names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                absolute(node.args[0].value, [])
    internal.discard("")
    return external, internal


SCANNED = {name: imports(source, name) for name, source in MODULES.items()}


def package(module: str) -> str:
    return module.split(".")[0] if "." in module else module


def test_the_scanner_sees_imports_at_every_level():
    source = """
import os
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    import ray.train
def f():
    from mlflow.entities import Metric
class C:
    def m(self):
        import importlib
        importlib.import_module("torch.distributed")
from . import runner
from .driver import prepare
from raytrain_orch.core.plan import build_plan
import raytrain_orch.store.state
from raytrain_orch.ray import session
"""
    external, internal = imports(source, "engine.reconcile")

    assert HEAVY <= external
    assert {"engine.runner", "engine.driver", "core.plan", "store.state", "ray.session"} <= internal


def test_every_module_lives_in_a_package_of_the_design():
    loose = sorted(m for m in MODULES if "." not in m and m not in TOP_LEVEL)
    found = {package(m) for m in MODULES if "." in m}

    assert loose == []
    assert found == set(PACKAGES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_what_its_package_may(module):
    if "." not in module:  # the public API at the top wires what users import
        return
    own = package(module)
    allowed = {own} | MAY_IMPORT[own] | WIRING.get(module, set()) | CROSSINGS.get(module, set())
    _, internal = SCANNED[module]

    outside = sorted(m for m in internal if package(m) not in allowed)

    assert outside == [], (
        f"raytrain_orch/{module.replace('.', '/')}.py imports {outside}; {own}/ may import {sorted(MAY_IMPORT[own])}"
    )


def test_ray_is_imported_only_under_the_ray_package():
    importers = sorted(name for name, (external, _) in SCANNED.items() if "ray" in external and package(name) != "ray")

    assert importers == []


def test_mlflow_is_imported_only_under_the_tracking_package():
    importers = sorted(
        name for name, (external, _) in SCANNED.items() if "mlflow" in external and package(name) != "tracking"
    )

    assert importers == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if package(m) == "core"))
def test_the_core_imports_no_ray_mlflow_torch_or_psutil(module):
    external, _ = SCANNED[module]

    assert not external & (HEAVY | {"psutil", "pyarrow"}), (
        f"{module} imports {sorted(external & (HEAVY | {'psutil', 'pyarrow'}))}"
    )


def test_no_import_cycle():
    graph = graphlib.TopologicalSorter({name: SCANNED[name][1] - {name} for name in MODULES})

    graph.prepare()  # raises CycleError naming the modules of a cycle


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_at_most_350_lines(module):
    lines = MODULES[module].count("\n")

    assert lines <= MAX_LINES, f"raytrain_orch/{module}.py has {lines} lines; split it (STYLE: one concept per module)"


def import_time_source(source: str) -> str:
    """The import statements that run when the module is imported (not those inside functions)."""
    found: list[ast.stmt] = []

    def visit(nodes: list) -> None:
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            for field in ("body", "orelse", "finalbody", "handlers"):
                visit(getattr(node, field, []))

    visit(ast.parse(source).body)
    return "\n".join(ast.unparse(node) for node in found)


def test_rto_validate_path_imports_neither_ray_nor_mlflow_at_import_time():
    # `rto validate` imports the driver (and `rto run` the wiring); whatever that drags in at import
    # time must stay free of ray and mlflow, so validate needs no cluster and no tracking server.
    at_import = {name: imports(import_time_source(source), name) for name, source in MODULES.items()}
    seen: set[str] = set()
    frontier = {"cli.main", "cli.wiring", "engine.driver"}
    while frontier:
        seen |= frontier
        frontier = {dep for module in frontier for dep in at_import[module][1] & set(MODULES)} - seen

    heavy = {
        module: sorted(at_import[module][0] & {"ray", "mlflow"})
        for module in seen
        if at_import[module][0] & {"ray", "mlflow"}
    }

    assert {"engine.runner", "tracking.tracker", "context"} <= seen  # the scan follows the driver's imports
    assert heavy == {}


def test_import_time_scan_skips_function_bodies():
    source = "import os\ntry:\n    import yaml\nexcept ImportError:\n    import json\ndef f():\n    import ray\n"

    assert imports(import_time_source(source))[0] == {"os", "yaml", "json"}


#: Module-level state that stays, and why: each entry lives as long as the process by nature.
MODULE_STATE = {
    "ray.sweep._FITTING": "Tune restores a sweep's pickled callbacks with no way to hand them the "
    "restarted driver's emitter; it calls them from Tuner.fit, in whose context this holds it",
    "tracking.tracker.tracker": "an MlflowClient per tracking URI (~10 ms to make), memoised: a pure "
    "function of the URI that holds no run's state",
}
#: Calls that make a mutable object (the name called, however it was imported).
MUTABLE_CALLS = {
    "dict", "list", "set", "bytearray", "defaultdict", "OrderedDict", "Counter", "deque", "ChainMap",
    "Lock", "RLock", "Event", "Condition", "Semaphore", "BoundedSemaphore", "local", "Queue",
    "SimpleQueue", "WeakValueDictionary", "WeakKeyDictionary", "WeakSet", "ContextVar",
}  # fmt: skip
MEMOISERS = {"cache", "lru_cache"}
MUTABLE_LITERALS = (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)


def _called(node: ast.AST) -> str:
    func = node.func if isinstance(node, ast.Call) else node
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def module_state(source: str) -> list[str]:
    """The names a module binds, at its top level, to mutable objects (dict/list/set literals and
    comprehensions, calls that make containers, locks, events, context variables) or to memoised
    functions, and each ``global`` statement anywhere in it. A read-only table is a
    ``MappingProxyType`` or a ``frozenset``; ``__all__`` and other dunders are the interpreter's."""
    found: list[str] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if any(_called(d) in MEMOISERS for d in node.decorator_list):
                    found.append(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and node.value is not None:
                mutable = isinstance(node.value, MUTABLE_LITERALS) or (
                    isinstance(node.value, ast.Call) and _called(node.value) in MUTABLE_CALLS
                )
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name) and not t.id.startswith("__")]
                if mutable or isinstance(node, ast.AugAssign):
                    found.extend(names)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, field, []))
            elif isinstance(node, ast.ExceptHandler):
                visit(node.body)

    tree = ast.parse(source)
    visit(tree.body)
    found.extend(f"global {', '.join(n.names)}" for n in ast.walk(tree) if isinstance(n, ast.Global))
    return found


def test_the_state_scan_finds_mutable_bindings_memoisers_and_global_statements():
    source = """
import functools, threading
from types import MappingProxyType
__all__ = ["a"]
NAMES = ("a", "b")
TABLE = MappingProxyType({"a": 1})
KINDS = frozenset({"x"})
_cache = {}
_SEEN: set[str] = set()
_lock = threading.Lock()
log = logging.getLogger(__name__)
if True:
    _late = [n for n in NAMES]
@functools.lru_cache(maxsize=8)
def client(uri): ...
def f():
    global _cache
    local = {}
"""
    assert module_state(source) == ["_cache", "_SEEN", "_lock", "_late", "client", "global _cache"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_hidden_module_state(module):
    # State that lives as long as a driver, a worker or a run belongs to an object of that lifetime.
    unlisted = [name for name in module_state(MODULES[module]) if f"{module}.{name}" not in MODULE_STATE]

    assert unlisted == [], (
        f"raytrain_orch/{module.replace('.', '/')}.py keeps {unlisted} at module level: give the state to "
        "the object whose lifetime it has (a read-only table: MappingProxyType or frozenset), or list it "
        "in MODULE_STATE with why it stays"
    )


def test_the_listed_module_state_still_exists():
    found = {f"{module}.{name}" for module, source in MODULES.items() for name in module_state(source)}

    assert set(MODULE_STATE) <= found, f"MODULE_STATE lists what is gone: {sorted(set(MODULE_STATE) - found)}"


#: How a helper that words an error or a duration for users is named; only ``core/text.py`` has one.
WORDING_HELPER = re.compile(r"(^|_)(gist|one_line|first_line|last_line|first_sentence|duration|clock_time|elapsed)$")


def test_one_error_gist_and_one_duration_format():
    defined = sorted(
        f"{name}.{node.name}"
        for name, source in MODULES.items()
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef)
        and WORDING_HELPER.search(node.name)
        and not any(isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list)
    )

    assert defined == ["core.text.duration", "core.text.gist"]
