"""Wiring: config file → pipeline → plan → (cluster, preflight) → runner.

``prepare`` is pure apart from reading the config and importing the pipeline module, so
``rto validate`` never starts Ray. ``execute`` connects to Ray, checks every gang against the
cluster before any compute is spent, and runs the plan.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .config import PipelineConfig, load_config
from .errors import InfeasibleError
from .pipeline import Pipeline, load_pipeline
from .plan import ClusterSpec, Feasibility, Plan, build_plan, check_gang
from .progress import LinePrinter
from .runner import EventSink, Runner
from .state import RunState, RunStore, new_run_id
from .storage import Storage
from .tracking import Tracker, resolve_tracking_uri


@dataclass(frozen=True)
class Prepared:
    config: PipelineConfig
    pipeline: Pipeline
    plan: Plan


def prepare(config_path: str | Path, overrides: Sequence[str] = (), project_dir: str | Path | None = None) -> Prepared:
    """Load and validate the config, import the pipeline, build the plan (no Ray, no compute)."""
    config = load_config(config_path, overrides)
    config = config.model_copy(
        update={
            "storage": Storage(config.storage).root_uri,
            "mlflow": config.mlflow.model_copy(update={"tracking_uri": resolve_tracking_uri(config.mlflow.tracking_uri)}),
        }
    )
    pipeline = load_pipeline(config.pipeline, project_dir)
    return Prepared(config, pipeline, build_plan(config, pipeline, source=str(config_path)))


def feasibility(plan: Plan, cluster: ClusterSpec) -> dict[str, Feasibility]:
    return {step.name: check_gang(step.name, step.gang, cluster) for step in plan.steps}


def preflight(plan: Plan, cluster: ClusterSpec) -> None:
    """Raise ``InfeasibleError`` naming the first step whose gang the cluster can never hold."""
    for verdict in feasibility(plan, cluster).values():
        if not verdict.feasible:
            raise InfeasibleError(verdict.reason)


def execute(prepared: Prepared, *, address: str | None = None, on_event: EventSink | None = None, run_id: str | None = None) -> RunState:
    """Run the prepared pipeline on Ray (local or ``address``) and return its final state."""
    import ray

    from . import scheduling
    from .backend import RayBackend

    config = prepared.config
    started = scheduling.connect(config.ray, address)
    # A run stopped by SIGTERM ends KILLED, like Ctrl-C. Set after ray.init, which installs its own.
    interrupt_on_sigterm()
    backend = None
    try:
        backend = RayBackend()
        preflight(prepared.plan, backend.cluster())
        runner = Runner(
            config,
            prepared.pipeline,
            prepared.plan,
            backend,
            RunStore(Storage(config.storage)),
            Tracker(config.mlflow.tracking_uri),
            on_event=on_event or LinePrinter(),
        )
        return runner.run(run_id or new_run_id(config.name))
    finally:
        if backend is not None:
            backend.close()
        if started:
            ray.shutdown()


def interrupt_on_sigterm() -> None:
    """Make SIGTERM (a stopped job, a closed terminal) unwind like Ctrl-C, so what was started
    is recorded and stopped instead of being left RUNNING. Main thread only, as Python requires."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
