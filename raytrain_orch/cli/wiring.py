"""The composition root: where the driver's adapters are chosen and plugged into the engine.

The engine sees Ray and MLflow only through its ports (``engine.driver.Compute`` and
``Tracking``, ``engine.reconcile.EndTracking``); this module, in the one package that may import
every other, picks them: Ray — the shared local runtime, a throwaway Ray or a cluster — as the
compute, and MLflow, through its outbox and run tree, as the tracking store. It also sets up the
driver's process. Ray is imported only once a step must compute, so ``rto validate`` and
``rto plan`` on a local Ray never start one.
"""

from __future__ import annotations

import contextlib
import functools
import subprocess
import sys
import time
from types import TracebackType
from typing import Any, Iterator, Sequence

from raytrain_orch.core import constants
from raytrain_orch.core.config import PipelineConfig
from raytrain_orch.core.errors import ConfigError
from raytrain_orch.core.events import Event, EventSink
from raytrain_orch.core.plan import Plan
from raytrain_orch.engine import driver
from raytrain_orch.engine.driver import Connected, Note, Prepared, preflight
from raytrain_orch.engine.ports import NoTracking, TrackingSink
from raytrain_orch.engine.process import interrupt_on_sigterm, quiet_libraries
from raytrain_orch.engine.reach import check_cluster_reach, check_cluster_storage
from raytrain_orch.store.state import RunState, RunStore, ray_job_id
from raytrain_orch.tracking.outbox import Outbox
from raytrain_orch.tracking.run_tree import RunTree
from raytrain_orch.tracking.store_process import StoreProcess
from raytrain_orch.tracking.tracker import KILLED, tracker


def execute(
    prepared: Prepared,
    *,
    on_event: EventSink,
    address: str | None = None,
    run_id: str | None = None,
    use_cache: bool = True,
    rerun: Sequence[str] = (),
    resume: RunState | None = None,
) -> RunState:
    """Run the prepared pipeline on Ray (local or ``address``), tracked in MLflow, and return its
    final state; ``on_event`` (the console's printer) shows its events. ``resume``: the record
    of the run to continue (``driver.prepare_resume``)."""
    quiet_libraries()
    interrupt_on_sigterm()  # a run stopped by SIGTERM ends KILLED, like Ctrl-C
    if resume is not None:
        from raytrain_orch.ray.session import reap

        reap(resume.driver.get("local_ray_processes", []))  # what its dead local Ray session left behind
    tracking_uri = prepared.config.mlflow.tracking_uri
    # A run planned as all cached computes nothing: MLflow would be most of its time. A Ray job's
    # driver keeps it (a process left behind could end with the job).
    later = prepared.recorded and ray_job_id() is None
    return driver.execute(
        prepared,
        compute=RayCompute(prepared.config, address),
        tracking=LaterMlflow(tracking_uri, prepared.config.storage) if later else MlflowTracking(tracking_uri),
        on_event=on_event,
        run_id=run_id,
        use_cache=use_cache,
        rerun=rerun,
        resume=resume,
    )


class RayCompute:
    """Ray as a run's compute: a cluster (``address``, ``ray.address``) or a Ray of this machine."""

    def __init__(self, config: PipelineConfig, address: str | None):
        self.config, self.address = config, address

    @contextlib.contextmanager
    def open(self, plan: Plan, on_event: EventSink, resume: RunState | None) -> Iterator[Connected]:
        from raytrain_orch.ray import admission, leases, session
        from raytrain_orch.ray.backend import RayBackend

        config = self.config
        if session.joins_cluster(config.ray, self.address):
            check_cluster_storage(config)
            check_cluster_reach(config)
        elif session.is_local(config.ray, self.address):
            preflight(plan, session.local_cluster_spec(config.ray))  # in seconds, before Ray starts
        connecting = time.time()
        module = config.pipeline.partition(":")[0]
        trains = [s.scaling.max_workers for s in plan.steps if s.kind == "train" and s.sweep is None and s.scaling]
        environment = config.storage_options.environment()
        connection = session.connect(config.ray, self.address, env=environment, preload=[module])
        with contextlib.ExitStack() as teardown:
            if connection.initialized:
                teardown.push(functools.partial(_leave, connection.kind == "throwaway"))
            interrupt_on_sigterm()  # again: ray.init installs a handler of its own
            on_event({**connection.event(), "ts": time.time()})
            # A throwaway local Ray's processes, for a later command to reap should this driver be
            # killed (the shared runtime outlives its drivers and stops by itself).
            info: dict[str, Any] = (
                {"local_ray_processes": session.local_session_processes()} if connection.initialized else {}
            )
            info["ray_connect_s"] = round(time.time() - connecting, 3)
            info["ray_runtime"] = {"action": connection.kind, "address": connection.address}
            backend = RayBackend(config.admission, preload=[module], train_workers=trains)
            teardown.callback(backend.close)
            preflight(plan, backend.cluster())
            if (unknown := admission.unknown_queue(config.admission.queue)) is not None:
                raise ConfigError(unknown)
            # Where the actors this driver depends on live: its own node and the head, never a node
            # whose loss would take them (and the driver) along. Kept in the run's record.
            info["helper_nodes"] = {"driver": session.driver_node_id(), **backend.helper_nodes()}
            if resume is not None:  # its driver is gone (prepare_resume checked): so are its leases
                leases.release_run(resume.run_id)
            yield backend, info


def _leave(
    throwaway: bool, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
) -> None:
    """Leave the Ray this driver connected to. Stopped (Ctrl-C, SIGTERM): step threads may still
    be inside Ray, and shutting Ray's core worker down under them makes Ray end this process with
    status 1 before it can exit as stopped. A throwaway Ray must stop with its driver; from any
    other Ray the driver's exit is enough (Ray ends its job, with the job's actors and groups)."""
    from raytrain_orch.ray import session

    stopped = kind is not None and issubclass(kind, KeyboardInterrupt)
    session.disconnect(shutdown=throwaway or not stopped)


class MlflowTracking:
    """MLflow as a run's tracking store: its run tree, written through the outbox so that
    tracking never blocks a step, and an outage costs no training."""

    def __init__(self, tracking_uri: str):
        # The store in a process of its own, opened meanwhile (a SQLite store checks its schema):
        # MLflow's work then never holds this process's interpreter lock, and it never loads here.
        self.outbox = Outbox(tracking_uri, connect=StoreProcess.connect)
        self.tree: RunTree | None = None

    def sink(self, prepared: Prepared, store: RunStore) -> TrackingSink:
        self.tree = RunTree(self.outbox, prepared.config, prepared.plan, prepared.pipeline.name, store)
        return self.tree

    def report_to(self, note: Note) -> None:
        self.outbox.on_note = note

    def close(self) -> None:
        """Store what is still queued; in an outage, keep retrying for a while and say so
        (through the note the runner gave, into the run's events)."""
        outbox = self.outbox
        if outbox.flush(5.0):
            outbox.close(0)
        else:
            timeout_s = constants.TRACKING_FLUSH_TIMEOUT_S
            outbox.on_note(Event.TRACKING_FLUSHING, queued=outbox.pending, timeout_s=timeout_s)
            left = outbox.close(timeout_s)
            if left:
                outbox.on_note(Event.TRACKING_LOST, lost=left, uri=outbox.tracking_uri)
        if self.tree is not None:
            self.tree.keep_ids()  # the runs created since the run's end


class LaterMlflow:
    """MLflow as a fully cached run's tracking store: written once the run is recorded, by a
    process of its own (``tracking.catch_up``), so the run loads no MLflow."""

    def __init__(self, tracking_uri: str, storage: str):
        self._sink = _Later(tracking_uri)
        self.storage = storage

    def sink(self, prepared: Prepared, store: RunStore) -> TrackingSink:
        return self._sink

    def report_to(self, note: Note) -> None:
        pass  # the catch-up process records its news itself

    def close(self) -> None:
        run_id = self._sink.run_id
        if run_id is None:  # the run never began
            return
        command = [sys.executable, "-m", "raytrain_orch.tracking.catch_up", run_id, self.storage]
        subprocess.Popen(  # noqa: S603 — our own module, with a run id and a storage URI
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )


class _Later(NoTracking):
    """The sink of a run whose MLflow runs come later: the record names the store, ids to come."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self.run_id: str | None = None

    def begin(self, state: RunState) -> None:
        state.mlflow = {"tracking_uri": self.tracking_uri, "experiment_id": None, "run_id": None}
        self.run_id = state.run_id


def end_mlflow_runs(state: RunState) -> list[str]:
    """A run's MLflow runs still open, ended KILLED (``reconcile``'s ``end_tracking``); their ids."""
    return tracker(state.mlflow["tracking_uri"]).end_open_runs(state.mlflow["experiment_id"], state.run_id, KILLED)
