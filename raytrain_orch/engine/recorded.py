"""A run whose every step is cached, found without importing the pipeline's module.

Importing a pipeline's module imports what its steps use (torch, say): seconds of a re-run that
computes nothing. So each run records its plan under the storage root, as
``plans/CONFIG_FINGERPRINT.json`` (``core.recorded_plan``), with a digest of every source file the
plan came from: the pipeline's module, the modules of its steps and of their params, and the
modules of this package that compute cache keys. A later run of the same resolved config whose
files are all unchanged plans from the record; when every step is cached, it never imports the
module. (A module whose steps depend on more than its source and the config, an environment
variable read at import say, is planned from its source as it was recorded.)
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import inspect
import sys
from pathlib import Path
from typing import Any

from raytrain_orch.core import pipeline as pipeline_module
from raytrain_orch.core import plan as plan_module
from raytrain_orch.core.config import PipelineConfig
from raytrain_orch.core.pipeline import Pipeline
from raytrain_orch.core.plan import Plan
from raytrain_orch.core.recorded_plan import record, replan
from raytrain_orch.engine.cache import cached_output
from raytrain_orch.store.state import RunStore

PLANS_DIR = "plans"


def remember(config: PipelineConfig, pipeline: Pipeline, plan: Plan, store: RunStore) -> None:
    """Record ``plan`` (made by importing the pipeline) for later runs of ``config``; nothing when
    a source file cannot be found (a module loaded from elsewhere than a file)."""
    module = _module_file(config.pipeline)
    files = {module, *_key_sources(), *(_source(obj) for step in pipeline.steps.values() for obj in _parts(step))}
    found = [path for path in files if path is not None and path.is_file()]
    if len(found) < len(files):
        return
    digests = {str(path): _digest(path) for path in sorted(found)}
    recorded = {**record(plan, pipeline.description), "module": str(module), "files": digests}
    store.storage.write_json(recorded, PLANS_DIR, f"{config.fingerprint()}.json")


def recall(config: PipelineConfig, store: RunStore, source: str = "config") -> tuple[Pipeline, Plan] | None:
    """The pipeline and plan recorded for ``config`` when its sources are unchanged and every step
    has a stored output; else None (the run imports the module and plans it)."""
    recorded = _read(store, config.fingerprint())
    if recorded is None or str(_module_file(config.pipeline)) != recorded.get("module"):
        return None
    for path, digest in recorded.get("files", {}).items():
        if not Path(path).is_file() or _digest(Path(path)) != digest:
            return None
    pipeline, plan = replan(config, recorded, source)
    if any(cached_output(store, step) is None for step in plan.steps):
        return None
    return pipeline, plan


def _read(store: RunStore, fingerprint: str) -> dict[str, Any] | None:
    try:
        return store.storage.read_json(PLANS_DIR, f"{fingerprint}.json")
    except (FileNotFoundError, OSError, ValueError):  # none yet, or unreadable: plan from the module
        return None


def _module_file(spec: str) -> Path | None:
    """The file ``import`` would load for the pipeline's module (``load_pipeline`` puts the working
    directory first on the path), found without running any of its packages' code."""
    search: list[str] | None = [str(Path.cwd().resolve()), *sys.path]
    module = spec.partition(":")[0]
    found = None
    for depth in range(1, module.count(".") + 2):
        found = importlib.machinery.PathFinder.find_spec(".".join(module.split(".")[:depth]), search)
        if found is None:
            return None
        search = list(found.submodule_search_locations or [])
    return Path(found.origin).resolve() if found is not None and found.origin else None


def _parts(step: Any) -> list[Any]:
    return [step.fn] + ([step.params_model] if step.params_model is not None else [])


def _source(obj: Any) -> Path | None:
    try:
        found = inspect.getsourcefile(obj)
    except TypeError:  # a built-in
        return None
    return Path(found).resolve() if found else None


def _key_sources() -> list[Path | None]:
    """This package's modules whose code decides a step's cache key."""
    return [_source(plan_module), _source(pipeline_module)]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
