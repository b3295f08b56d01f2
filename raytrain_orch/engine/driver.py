"""The driver: config file → pipeline → plan, then the plan run through the engine's ports.

``prepare`` is pure apart from reading the config and importing the pipeline module, so
``rto validate`` never starts Ray. ``execute`` reaches its compute only when a step must
compute, checks every gang against the cluster before any compute is spent, and runs the plan.
It sees its adapters only as ports — ``Compute`` (where steps run), ``Tracking`` (where the run
is recorded besides its run directory) and the ``EventSink`` that shows the run — which the
composition root (``cli/wiring.py``: Ray, MLflow) hands it.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Protocol, Sequence

from raytrain_orch.core import constants
from raytrain_orch.core.config import PipelineConfig, load_config, parse_config
from raytrain_orch.core.errors import ConfigError, InfeasibleError
from raytrain_orch.core.events import EventSink
from raytrain_orch.core.pipeline import Pipeline, load_pipeline
from raytrain_orch.core.placement import ClusterSpec, Feasibility, check_gang
from raytrain_orch.core.plan import Plan, build_plan
from raytrain_orch.core.tracking_uri import resolve_tracking_uri
from raytrain_orch.engine.cache import steps_to_compute
from raytrain_orch.engine.nocompute import NoCompute
from raytrain_orch.engine.notify import Notifier
from raytrain_orch.engine.ports import Backend, TrackingSink
from raytrain_orch.engine.recorded import recall, remember
from raytrain_orch.engine.runner import Runner
from raytrain_orch.store.state import RunState, RunStore, Status, new_run_id
from raytrain_orch.store.storage import Storage


@dataclass(frozen=True)
class Prepared:
    config: PipelineConfig
    pipeline: Pipeline
    plan: Plan
    #: Planned from an earlier run's record (``engine.recorded``): every step was cached, and the
    #: pipeline's module was not imported.
    recorded: bool = False


def prepare(config_path: str | Path, overrides: Sequence[str] = (), project_dir: str | Path | None = None) -> Prepared:
    """Load and validate the config, import the pipeline, build the plan (no Ray, no compute)."""
    return _prepared(load_config(config_path, overrides), str(config_path), project_dir)


def prepare_cached(config_path: str | Path, overrides: Sequence[str] = ()) -> Prepared | None:
    """The run of a config whose every step is cached, planned as an earlier run recorded it
    without importing the pipeline's module; None when a step must compute, or the module's
    sources changed since (then ``prepare``)."""
    config = _resolved(load_config(config_path, overrides))
    found = recall(config, RunStore(Storage(config.storage)), source=str(config_path))
    return Prepared(config, *found, recorded=True) if found is not None else None


def _prepared(config: PipelineConfig, source: str, project_dir: str | Path | None = None) -> Prepared:
    config = _resolved(config)
    pipeline = load_pipeline(config.pipeline, project_dir)
    return Prepared(config, pipeline, build_plan(config, pipeline, source=source))


def _resolved(config: PipelineConfig) -> PipelineConfig:
    """The config with its storage root and MLflow URI made absolute."""
    # The store's endpoint and region, for this process's filesystems (the workers get them too).
    os.environ.update(config.storage_options.environment())
    return config.model_copy(
        update={
            "storage": Storage(config.storage).root_uri,
            "mlflow": config.mlflow.model_copy(
                update={"tracking_uri": resolve_tracking_uri(config.mlflow.tracking_uri)}
            ),
        }
    )


def prepare_resume(run_id: str, storage: str, after_job: str | None = None) -> tuple[Prepared, RunState]:
    """The run's own resolved config (from its run directory), its pipeline as the code is now,
    and its record; raise a one-line error when the run cannot be resumed.

    ``after_job``: the Ray job that drove the run has ended (``rto submit`` saw it), so a run it
    left RUNNING is resumed even when its driver was on another node.
    """
    store = RunStore(Storage(storage))
    previous = store.load(run_id)
    if previous.status is Status.SUCCEEDED:
        raise ConfigError(f"run {run_id} already SUCCEEDED; nothing to resume (start a new one with `rto run`)")
    ended = after_job is not None and previous.driver.get("ray_job_id") == after_job
    if previous.status is Status.RUNNING and not ended and previous.driver_alive():
        raise ConfigError(
            f"run {run_id} is still running (driver pid {previous.driver.get('pid')}); stop it before resuming"
        )
    path = store.run_path(run_id, constants.RESOLVED_CONFIG_FILE)
    config = parse_config(store.storage.read_bytes(*path).decode(), store.storage.uri(*path))
    return _prepared(config, store.storage.uri(*path)), previous


def feasibility(plan: Plan, cluster: ClusterSpec) -> dict[str, Feasibility]:
    return {step.name: check_gang(step.name, step.gang, cluster) for step in plan.steps}


def preflight(plan: Plan, cluster: ClusterSpec) -> None:
    """Raise ``InfeasibleError`` naming the first step whose gang the cluster can never hold."""
    for verdict in feasibility(plan, cluster).values():
        if not verdict.feasible:
            raise InfeasibleError(verdict.reason)


# --- the ports ---------------------------------------------------------------------------------

#: The backend a run's steps compute on, and what the run's record keeps of the connection.
Connected = tuple[Backend, dict[str, Any]]
#: What the runner records of the tracking store's news: ``note(event, **fields)``.
Note = Callable[..., None]


class Compute(Protocol):
    """Where a run's steps compute, reached only when one must."""

    def open(self, plan: Plan, on_event: EventSink, resume: RunState | None) -> ContextManager[Connected]:
        """Connect, check that the cluster can hold every gang (``preflight``), and give the
        backend with what the run's record keeps of the connection (its ``driver_info``); on
        exit, close the backend and leave (a stopped run leaves without ending what it joined).
        ``resume``: the run whose dead driver's claims on the cluster are let go."""
        ...


class Tracking(Protocol):
    """Where the run is recorded besides its run directory (an MLflow store, in production)."""

    def sink(self, prepared: Prepared, store: RunStore) -> TrackingSink:
        """What the runner tells of the run."""
        ...

    def report_to(self, note: Note) -> None:
        """Tell ``note`` the store's news from now on (unreachable, back, an operation dropped)."""
        ...

    def close(self) -> None:
        """Store what is still queued; in an outage, keep retrying for a while and say so."""
        ...


def execute(
    prepared: Prepared,
    *,
    compute: Compute,
    tracking: Tracking,
    on_event: EventSink,
    run_id: str | None = None,
    use_cache: bool = True,
    rerun: Sequence[str] = (),
    resume: RunState | None = None,
) -> RunState:
    """Run the prepared pipeline and return its final state; ``on_event`` shows its events.

    Steps whose cache key matches a stored output are reused unless ``use_cache`` is off or
    they are in ``rerun`` (or downstream of one). A run with nothing to compute opens no compute.
    The teardown runs in reverse: the compute is left, the webhooks (``notify:``) get what is still
    going out (``NOTIFY_FLUSH_S`` at most), then tracking stores what is queued.
    (The process is the caller's to set up: ``engine.process``.)
    """
    config = prepared.config
    store = RunStore(Storage(config.storage))
    planned_at = time.time()
    with contextlib.ExitStack() as teardown:
        teardown.callback(store.close)  # the events tracking's close records are written too
        teardown.callback(tracking.close)  # what the run's end queued is stored too
        notifier = Notifier.of(config, store)  # None: no webhook
        if notifier is not None:
            notifier.start()
            teardown.callback(notifier.close)  # before the store's: the messages it could not send are recorded
            on_event = notifier.watching(on_event)  # every record, the compute's too
        backend: Backend = NoCompute()
        driver_info: dict[str, Any] = {}
        if steps_to_compute(prepared.plan, store, use_cache, rerun):
            backend, driver_info = teardown.enter_context(compute.open(prepared.plan, on_event, resume))
        # The driver's start, for its record: plan made (imports done), compute ready.
        driver_info.update(planned_at=round(planned_at, 4), compute_at=round(time.time(), 4))
        if not prepared.recorded:  # once the run is sure to start: a later unchanged run needs no import
            remember(config, prepared.pipeline, prepared.plan, store)
        runner = Runner(
            config,
            prepared.pipeline,
            prepared.plan,
            backend,
            store,
            tracking.sink(prepared, store),
            on_event=on_event,
            use_cache=use_cache,
            rerun=rerun,
            driver_info=driver_info,
        )
        tracking.report_to(runner.note)  # the store gone or back: recorded and shown as run events
        if notifier is not None:  # no alert comes before the runner records the run's start; kept till here
            notifier.report_to(runner.note)
        if resume is not None:
            state = runner.run(resume.run_id, resume=resume)
        else:
            state = runner.run(run_id or new_run_id(config.name))
    return state
