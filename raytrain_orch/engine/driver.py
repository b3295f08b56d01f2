"""Wiring: config file → pipeline → plan → (cluster, preflight) → runner.

``prepare`` is pure apart from reading the config and importing the pipeline module, so
``rto validate`` never starts Ray. ``execute`` connects to Ray, checks every gang against the
cluster before any compute is spent, and runs the plan.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from raytrain_orch.cli.progress import LinePrinter
from raytrain_orch.context import StepContext
from raytrain_orch.core import constants
from raytrain_orch.core.config import PipelineConfig, load_config, parse_config
from raytrain_orch.core.errors import ClusterAccessError, ConfigError, InfeasibleError, StopRequested
from raytrain_orch.core.events import Event, EventSink
from raytrain_orch.core.pipeline import Pipeline, load_pipeline
from raytrain_orch.core.plan import ClusterSpec, Feasibility, Plan, StepPlan, build_plan, check_gang
from raytrain_orch.core.policy import Failure
from raytrain_orch.engine.runner import Backend, Runner, steps_to_compute
from raytrain_orch.store.artifacts import Artifact
from raytrain_orch.store.state import RunState, RunStore, Status, new_run_id
from raytrain_orch.store.storage import Storage
from raytrain_orch.tracking.outbox import Outbox
from raytrain_orch.tracking.run_tree import RunTree
from raytrain_orch.tracking.tracker import resolve_tracking_uri


@dataclass(frozen=True)
class Prepared:
    config: PipelineConfig
    pipeline: Pipeline
    plan: Plan


def prepare(config_path: str | Path, overrides: Sequence[str] = (), project_dir: str | Path | None = None) -> Prepared:
    """Load and validate the config, import the pipeline, build the plan (no Ray, no compute)."""
    return _prepared(load_config(config_path, overrides), str(config_path), project_dir)


def _prepared(config: PipelineConfig, source: str, project_dir: str | Path | None = None) -> Prepared:
    # The store's endpoint and region, for this process's filesystems (the workers get them too).
    os.environ.update(config.storage_options.environment())
    config = config.model_copy(
        update={
            "storage": Storage(config.storage).root_uri,
            "mlflow": config.mlflow.model_copy(
                update={"tracking_uri": resolve_tracking_uri(config.mlflow.tracking_uri)}
            ),
        }
    )
    pipeline = load_pipeline(config.pipeline, project_dir)
    return Prepared(config, pipeline, build_plan(config, pipeline, source=source))


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
    from raytrain_orch.ray.session import reap

    reap(previous.driver.get("local_ray_processes", []))  # what its dead local Ray session left behind
    path = store.run_path(run_id, constants.RESOLVED_CONFIG_FILE)
    config = parse_config(store.storage.read_bytes(*path).decode(), store.storage.uri(*path))
    return _prepared(config, store.storage.uri(*path)), previous


def check_cluster_storage(config: PipelineConfig) -> None:
    """A run on a cluster needs a storage root every node reaches: a local path only as a shared mount."""
    if Storage(config.storage).local_path() is None or config.storage_options.shared_mount:
        return
    raise ConfigError(
        f"storage {config.storage} is a local path, which other nodes of the cluster never see; use object storage "
        "(--set storage=s3://BUCKET/rto-runs) or, if every node mounts it, say so "
        "(--set storage_options.shared_mount=true)"
    )


def check_cluster_reach(config: PipelineConfig) -> None:
    """On a cluster, where the driver runs (a submitted job's node): reach the storage root and
    an MLflow server before anything starts, and say in one line which one is out of reach."""
    check_storage_reach(config)
    check_mlflow_reach(config)


def check_storage_reach(config: PipelineConfig) -> None:
    """Write (and remove) a file under an object-store root, or say in one line that it cannot be.
    (A local path needs nothing written: on a cluster it must be a shared mount, which
    ``check_cluster_storage`` asks for, and a write here would leave its directories behind.)"""
    storage = Storage(config.storage)
    if storage.local_path() is not None:
        return
    probe = (constants.RUNS_DIR, f".probe-{os.getpid()}")
    try:
        storage.write_bytes(b"", *probe)
        storage.fs.delete_file(storage.path(*probe))
    except Exception as e:  # noqa: BLE001 — whatever the filesystem raises, the cause is the same
        raise ClusterAccessError(
            f"the storage root {config.storage} cannot be written from this node ({_gist(e)}); use a bucket every "
            "node reaches, with its credentials on the nodes (docs/storage.md), or a mount they all share"
        ) from None


def check_mlflow_reach(config: PipelineConfig) -> None:
    """An MLflow server answers its health check, or one line says it does not."""
    uri = config.mlflow.tracking_uri
    if uri.startswith(("http://", "https://")):
        import urllib.request

        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10).close()
        except OSError as e:
            raise ClusterAccessError(
                f"the MLflow server {uri} cannot be reached from this node ({_gist(e)}); run one every node reaches "
                "and set mlflow.tracking_uri to its address (127.0.0.1 and localhost mean each node itself)"
            ) from None


def _gist(error: BaseException) -> str:
    reason = getattr(error, "reason", None)  # urllib's URLError wraps the socket's error
    return str(reason or error).strip().splitlines()[0][:200] or type(error).__name__


def feasibility(plan: Plan, cluster: ClusterSpec) -> dict[str, Feasibility]:
    return {step.name: check_gang(step.name, step.gang, cluster) for step in plan.steps}


#: The libraries' loggers the driver keeps off the console (their warnings and errors stay, unless
#: said here), and how loud each may be there; ``RTO_VERBOSE=1`` leaves them as they are.
_QUIET = MappingProxyType(
    {
        "ray": logging.ERROR,  # the token-auth banner, Ray Train's driver-side INFO
        "mlflow": logging.WARNING,  # "Creating initial MLflow database tables", "Updating database tables"
        "alembic": logging.WARNING,  # MLflow's migrations
    }
)


def quiet_libraries() -> None:
    """Keep what Ray and MLflow say at INFO (and Ray's warnings) off the console: the run's own
    lines say what happens. Errors still show. (MLflow sets its loggers up when it is imported,
    later, from this variable.)"""
    if constants.VERBOSE:
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name, level in _QUIET.items():
        logging.getLogger(name).setLevel(level)


def preflight(plan: Plan, cluster: ClusterSpec) -> None:
    """Raise ``InfeasibleError`` naming the first step whose gang the cluster can never hold."""
    for verdict in feasibility(plan, cluster).values():
        if not verdict.feasible:
            raise InfeasibleError(verdict.reason)


def execute(
    prepared: Prepared,
    *,
    address: str | None = None,
    on_event: EventSink | None = None,
    run_id: str | None = None,
    use_cache: bool = True,
    rerun: Sequence[str] = (),
    resume: RunState | None = None,
) -> RunState:
    """Run the prepared pipeline on Ray (local or ``address``) and return its final state.

    Steps whose cache key matches a stored output are reused unless ``use_cache`` is off or
    they are in ``rerun`` (or downstream of one). A run with nothing to compute starts no Ray.
    """
    config = prepared.config
    store = RunStore(Storage(config.storage))
    on_event = on_event or LinePrinter()
    quiet_libraries()
    interrupt_on_sigterm()  # a run stopped by SIGTERM ends KILLED, like Ctrl-C
    started, throwaway, interrupted, driver_info = False, False, False, dict[str, Any]()
    backend: Backend = NoCompute()
    tracking = Outbox(config.mlflow.tracking_uri)
    try:
        if steps_to_compute(prepared.plan, store, use_cache, rerun):
            from raytrain_orch.ray import leases, session
            from raytrain_orch.ray.backend import RayBackend

            if session.joins_cluster(config.ray, address):
                check_cluster_storage(config)
                check_cluster_reach(config)
            elif session.is_local(config.ray, address):
                preflight(prepared.plan, session.local_cluster_spec(config.ray))  # in seconds, before Ray starts
            connecting = time.time()
            connection = session.connect(config.ray, address, env=config.storage_options.environment())
            started, throwaway = connection.initialized, connection.kind == "throwaway"
            interrupt_on_sigterm()  # again: ray.init installs a handler of its own
            on_event({**connection.event(), "ts": time.time()})
            # A throwaway local Ray's processes, for a later command to reap should this driver be
            # killed (the shared runtime outlives its drivers and stops by itself).
            driver_info = {"local_ray_processes": session.local_session_processes()} if started else {}
            driver_info["ray_connect_s"] = round(time.time() - connecting, 3)
            driver_info["ray_runtime"] = {"action": connection.kind, "address": connection.address}
            ray_backend = backend = RayBackend(config.admission, preload=[config.pipeline.partition(":")[0]])
            preflight(prepared.plan, backend.cluster())
            # Where the actors this driver depends on live: its own node and the head, never a node
            # whose loss would take them (and the driver) along. Kept in the run's record.
            driver_info["helper_nodes"] = {"driver": session.driver_node_id(), **ray_backend.helper_nodes()}
            if resume is not None:  # its driver is gone (prepare_resume checked): so are its leases
                leases.release_run(resume.run_id)
        runner = Runner(
            config,
            prepared.pipeline,
            prepared.plan,
            backend,
            store,
            RunTree(tracking, config, prepared.plan, prepared.pipeline.name, store),
            on_event=on_event,
            use_cache=use_cache,
            rerun=rerun,
            driver_info=driver_info,
        )
        tracking.on_note = runner.note  # MLflow gone or back: recorded and shown as run events
        if resume is not None:
            return runner.run(resume.run_id, resume=resume)
        return runner.run(run_id or new_run_id(config.name))
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        backend.close()
        if started:
            # Stopped (Ctrl-C, SIGTERM): step threads may still be inside Ray, and shutting Ray's
            # core worker down under them makes Ray end this process with status 1 before it can
            # exit as stopped. A throwaway Ray must stop with its driver; from any other Ray the
            # driver's exit is enough (Ray ends its job, with the job's actors and groups).
            session.disconnect(shutdown=throwaway or not interrupted)
        _close_tracking(tracking, on_event)


def _close_tracking(tracking: Outbox, on_event: EventSink) -> None:
    """Store what is still queued for MLflow; in an outage, keep retrying for a while and say so
    (``tracking.on_note`` records the outbox's news in the run's events)."""
    if tracking.flush(5.0):
        tracking.close(0)
        return
    tracking.on_note(Event.TRACKING_FLUSHING, queued=tracking.pending, timeout_s=constants.TRACKING_FLUSH_TIMEOUT_S)
    left = tracking.close(constants.TRACKING_FLUSH_TIMEOUT_S)
    if left:
        tracking.on_note(Event.TRACKING_LOST, lost=left, uri=tracking.tracking_uri)


def interrupt_on_sigterm() -> None:
    """Make SIGTERM (a stopped job, a closed terminal) unwind like Ctrl-C, so what was started
    is recorded and stopped instead of being left RUNNING. Main thread only, as Python requires."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame) -> None:
    raise StopRequested(signum)


class NoCompute:
    """The backend of a run whose every step is a cache hit: nothing runs, so no Ray is needed."""

    def cluster(self) -> ClusterSpec:
        return ClusterSpec()

    def run_step(self, step: StepPlan, fn: Callable, ctx: StepContext, inputs: Mapping[str, Artifact]) -> Artifact:
        raise RuntimeError(f"step {step.name} needs compute, but the run was planned as fully cached")

    def drain_events(self) -> list[dict[str, Any]]:
        return []

    def describe_failure(self, step: str, attempt: int, error: BaseException) -> Failure:
        return Failure(step, attempt, "infra", type(error).__name__, str(error))

    def keep_stacks(self, step: str, attempt: int) -> int:
        return 0

    def end_attempt(self, step: str, attempt: int) -> None:
        pass

    def close(self) -> None:
        pass
