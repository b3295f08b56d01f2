"""Keep the dependency direction honest: a pure core, vendors only at the edge, small modules."""

from __future__ import annotations

import ast

import pytest

from .conftest import REPO

PACKAGE = REPO / "raytrain_orch"
PURE = ("admission", "config", "pipeline", "plan", "policy", "state", "storage", "errors", "constants", "progress", "redact")
HEAVY = {"ray", "mlflow", "torch"}
MAX_LINES = 500


def imports(source: str, package: str = "raytrain_orch") -> tuple[set[str], set[str]]:
    """(external top-level packages, sibling modules of ``package``) imported anywhere in ``source``.

    Every level counts: module top, functions, methods, ``if TYPE_CHECKING`` blocks, and
    ``importlib.import_module("x")`` / ``__import__("x")`` with a literal name.
    """
    external: set[str] = set()
    internal: set[str] = set()

    def absolute(name: str, names: list[str]) -> None:
        head, _, rest = name.partition(".")
        if head != package:
            external.add(head)
        elif rest:
            internal.add(rest.split(".")[0])
        else:
            internal.update(names)

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                absolute(alias.name, [])
        elif isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            if node.level == 0:
                absolute(node.module or "", names)
            elif node.level == 1:
                internal.update([node.module.split(".")[0]] if node.module else names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                absolute(node.args[0].value, [])
    return external, internal


MODULES = {path.stem: path.read_text() for path in sorted(PACKAGE.glob("*.py"))}
# ``from raytrain_orch import Pipeline`` names an object, not a module: keep module names only.
SCANNED = {name: (ext, intl & set(MODULES)) for name, (ext, intl) in ((n, imports(s)) for n, s in MODULES.items())}


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
from . import cli
from .driver import prepare
from raytrain_orch.plan import build_plan
import raytrain_orch.state
"""
    external, internal = imports(source)

    assert HEAVY <= external
    assert {"cli", "driver", "plan", "state"} <= internal


def test_every_pure_module_exists():
    assert set(PURE) <= set(MODULES)


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_ray_mlflow_or_torch(module):
    external, _ = SCANNED[module]

    assert not external & HEAVY, f"raytrain_orch/{module}.py imports {sorted(external & HEAVY)}; keep the core pure"


def test_only_tracking_imports_mlflow():
    importers = sorted(name for name, (external, _) in SCANNED.items() if "mlflow" in external)

    assert importers == ["tracking"]


def test_pure_modules_import_only_pure_siblings():
    for module in PURE:
        _, internal = SCANNED[module]
        assert internal <= set(PURE), f"{module}.py imports {sorted(internal - set(PURE))}, which are not pure"


def test_only_the_cli_entry_points_import_cli_or_driver():
    allowed = {"cli", "cli_jobs", "__main__"}

    offenders = {
        name: sorted(internal & {"cli", "driver"})
        for name, (_, internal) in SCANNED.items()
        if name not in allowed and internal & {"cli", "driver"}
    }

    assert offenders == {}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_at_most_500_lines(module):
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
    # `rto validate` imports driver; whatever that drags in at import time must stay free of
    # ray and mlflow, so validate needs no cluster and no tracking server.
    at_import = {name: imports(import_time_source(source)) for name, source in MODULES.items()}
    seen: set[str] = set()
    frontier = {"cli", "driver"}
    while frontier:
        seen |= frontier
        frontier = {dep for module in frontier for dep in at_import[module][1] & set(MODULES)} - seen

    heavy = {module: sorted(at_import[module][0] & {"ray", "mlflow"}) for module in seen if at_import[module][0] & {"ray", "mlflow"}}

    assert {"runner", "tracking", "context"} <= seen  # the scan follows driver's imports
    assert heavy == {}


def test_import_time_scan_skips_function_bodies():
    source = "import os\ntry:\n    import yaml\nexcept ImportError:\n    import json\ndef f():\n    import ray\n"

    assert imports(import_time_source(source))[0] == {"os", "yaml", "json"}
