"""``StepContext``: where a step's metrics and models go."""

from __future__ import annotations

import pickle

import pytest

from raytrain_orch.context import StepContext
from raytrain_orch.core.errors import TrackingUnavailableError


class Channel:
    """Stands in for the Ray queue the driver reads progress events from."""

    def __init__(self):
        self.items = []

    def put_nowait(self, item):
        self.items.append(item)


def context(**changes) -> StepContext:
    fields = dict(
        run_id="r1",
        step="register",
        attempt=2,
        storage_uri="/tmp/x",
        run_path=("runs", "r1"),
        artifact_path=("cache", "register", "k"),
        tracking_uri="sqlite:////tmp/x/mlflow.db",
        mlflow_run_id="abc",
        events=Channel(),
    )
    return StepContext(**{**fields, **changes})


def test_metrics_go_to_the_driver_with_the_step_attempt_and_index():
    ctx = context()
    ctx.log_metrics({"auc": 0.91, "n": 3}, step=4)

    (event,) = ctx.events.items
    assert {k: event[k] for k in ("event", "step", "attempt", "metrics", "index")} == {
        "event": "metrics",
        "step": "register",
        "attempt": 2,
        "metrics": {"auc": 0.91, "n": 3.0},
        "index": 4,
    }


def test_a_step_started_while_mlflow_was_down_cannot_register_and_says_it_is_retried():
    ctx = context(mlflow_run_id=None)

    with pytest.raises(
        TrackingUnavailableError,
        match=r"step register cannot register a model: MLflow at sqlite:///.* did not create its run "
        r"\(unreachable\).*retried",
    ) as raised:
        ctx.register_model(object(), "digits")
    assert pickle.loads(pickle.dumps(raised.value)).args == raised.value.args  # it crosses the Ray task boundary


def test_a_registered_model_is_told_to_the_driver(monkeypatch):
    class Tracker:
        def log_pytorch_model(self, run_id, model, **options):
            return "3"

        def promote_tags(self, name, version, metrics):
            pass

    monkeypatch.setattr(StepContext, "_tracker", lambda self, for_what="log": (Tracker(), "run-1"))
    ctx = context()

    registration = ctx.register_model(object(), "digits", metrics={"acc": 0.9})

    (event,) = ctx.events.items
    assert registration is not None and registration.version == "3"
    assert {k: event[k] for k in ("event", "step", "attempt", "name", "version", "alias")} == {
        "event": "model_registered",
        "step": "register",
        "attempt": 2,
        "name": "digits",
        "version": "3",
        "alias": None,
    }


def test_a_context_without_a_driver_or_a_run_logs_nothing_and_registers_nothing():
    ctx = context(mlflow_run_id=None, events=None)

    assert ctx.register_model(object(), "digits") is None
    ctx.log_metrics({"auc": 0.9})  # no driver and no run: nowhere to log, and no error


def test_heartbeats_are_limited_per_context_and_a_new_attempt_starts_afresh(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("raytrain_orch.context.time.monotonic", lambda: now[0])
    first = context()
    for t in (100.0, 100.05, 100.2, 100.25):
        now[0] = t
        first.heartbeat()
    retry = context(attempt=3)  # a new attempt's context: its own limiter
    retry.heartbeat()

    assert [e["event"] for e in first.events.items] == ["heartbeat", "heartbeat"]  # at 100.0 and 100.2
    assert [e["attempt"] for e in retry.events.items] == [3]


def test_a_step_started_before_its_mlflow_run_existed_looks_it_up_once_when_it_first_logs(monkeypatch, tmp_path):
    asked, logged = [], []

    class Store:
        def wait_for_step_run(self, *where, timeout_s):
            asked.append(where)
            return "found-run"

        def log_artifact(self, run_id, local_path, artifact_path=None):
            logged.append(run_id)

    monkeypatch.setattr("raytrain_orch.tracking.tracker.tracker", lambda uri: Store())
    ctx = context(mlflow_run_id=None, mlflow_experiment="digits")
    (tmp_path / "a.txt").write_text("a")

    ctx.log_artifact(tmp_path / "a.txt")
    ctx.log_artifact(tmp_path / "a.txt")

    assert asked == [("digits", "r1", "register", 2)] and logged == ["found-run", "found-run"]
