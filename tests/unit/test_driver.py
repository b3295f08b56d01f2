"""The driver through its ports, with fakes: which compute a run opens, the order its teardown
keeps, what a stop tells the compute; and the driver process's SIGTERM and reach checks."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest

from raytrain_orch.core.errors import ClusterAccessError, ConfigError, StopRequested
from raytrain_orch.core.plan import build_plan
from raytrain_orch.engine import driver
from raytrain_orch.engine.nocompute import NoCompute
from raytrain_orch.engine.ports import NoTracking
from raytrain_orch.engine.process import interrupt_on_sigterm
from raytrain_orch.engine.reach import check_cluster_storage, check_mlflow_reach
from raytrain_orch.store.state import Status
from tests.fakes import FakeBackend
from tests.pipelines.diamond import pipeline

from .test_runner import config


class FakeCompute:
    def __init__(self, log: list[str]):
        self.log, self.backend = log, FakeBackend()

    @contextlib.contextmanager
    def open(self, plan, on_event, resume):
        self.log.append("compute opened")
        try:
            yield self.backend, {"compute": "fake"}
        except BaseException as e:
            self.log.append(f"compute left after {type(e).__name__}")
            raise
        self.log.append("compute left")


class FakeTracking:
    def __init__(self, log: list[str]):
        self.log = log

    def sink(self, prepared, store):
        return NoTracking()

    def report_to(self, note) -> None:
        self.log.append("notes to the runner")

    def close(self) -> None:
        self.log.append("tracking closed")


def run(tmp_path, log: list[str], on_event=lambda record: None, **options):
    cfg = config(tmp_path)
    prepared = driver.Prepared(cfg, pipeline, build_plan(cfg, pipeline))
    compute, tracking = FakeCompute(log), FakeTracking(log)
    state = driver.execute(prepared, compute=compute, tracking=tracking, on_event=on_event, **options)
    return state, compute


def test_a_run_computes_through_the_compute_it_opens_and_closes_tracking_last(tmp_path):
    log: list[str] = []

    state, compute = run(tmp_path, log, run_id="r1")

    assert state.status is Status.SUCCEEDED and state.driver["compute"] == "fake"
    assert sorted(name for name, _ in compute.backend.calls) == ["join", "left", "right", "source"]
    assert log == ["compute opened", "notes to the runner", "compute left", "tracking closed"]


def test_a_run_with_nothing_to_compute_opens_no_compute(tmp_path):
    run(tmp_path, [], run_id="r1")
    log: list[str] = []

    state, _ = run(tmp_path, log, run_id="r2")

    assert state.status is Status.SUCCEEDED
    assert log == ["notes to the runner", "tracking closed"]


def test_a_stopped_run_tells_the_compute_it_was_stopped_and_still_closes_tracking(tmp_path):
    log: list[str] = []

    def stop_at_the_first_step(record) -> None:
        if record["event"] == "step_started":
            raise StopRequested(signal.SIGTERM)

    with pytest.raises(StopRequested):
        run(tmp_path, log, on_event=stop_at_the_first_step, run_id="r1")

    assert log[-2:] == ["compute left after StopRequested", "tracking closed"]


def test_the_null_backend_refuses_to_compute(tmp_path):
    step = build_plan(config(tmp_path), pipeline).steps[0]

    with pytest.raises(RuntimeError, match="planned as fully cached"):
        NoCompute().run_step(step, lambda: None, None, {})  # type: ignore[arg-type]


def test_sigterm_unwinds_the_driver_as_a_stop_carrying_the_signal():
    before = signal.getsignal(signal.SIGTERM)
    interrupt_on_sigterm()
    try:
        with pytest.raises(StopRequested) as raised:
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, before)

    assert raised.value.signum == signal.SIGTERM


def test_a_local_storage_root_needs_a_shared_mount_on_a_cluster(tmp_path):
    cfg = config(tmp_path)

    with pytest.raises(ConfigError, match="a local path, which other nodes of the cluster never see"):
        check_cluster_storage(cfg)
    shared = cfg.model_copy(update={"storage_options": cfg.storage_options.model_copy(update={"shared_mount": True})})
    check_cluster_storage(shared)


def test_an_mlflow_server_out_of_reach_is_one_line_naming_it(tmp_path):
    cfg = config(tmp_path)
    closed = "http://127.0.0.1:1"
    cfg = cfg.model_copy(update={"mlflow": cfg.mlflow.model_copy(update={"tracking_uri": closed})})

    with pytest.raises(ClusterAccessError) as raised:
        check_mlflow_reach(cfg)

    message = str(raised.value)
    assert message.startswith(f"the MLflow server {closed} cannot be reached from this node (")
    assert "\n" not in message
