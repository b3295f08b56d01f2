"""The driver's MLflow outbox, against a store that fails the way an unreachable server does."""

from __future__ import annotations

import threading
import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from raytrain_orch.tracking.outbox import Outbox
from raytrain_orch.tracking.tracker import Tracker


class Store:
    """Records what reaches it; ``down`` makes every call fail like an unreachable server."""

    def __init__(self):
        self.down = threading.Event()
        self.calls: list[tuple] = []
        self.requests = 0
        self.client = self
        self._ids = 0

    def _check(self):
        self.requests += 1
        if self.down.is_set():
            raise MlflowException(
                "API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/create failed with exception ConnectionError"
            )

    def experiment_id(self, name):
        self._check()
        return "1"

    def start_run(self, experiment_id, name, tags, parent_id=None):
        self._check()
        self._ids += 1
        self.calls.append(("start_run", name, parent_id))
        return f"run{self._ids}"

    log_metric_batches = Tracker.log_metric_batches  # the real batching, down to client.log_batch below

    def log_batch(self, run_id, metrics=()):
        self._check()
        self.calls.append(("metrics", run_id, [(m.key, m.value, m.step) for m in metrics]))

    def log_params(self, run_id, params):
        self._check()
        self.calls.append(("params", run_id, dict(params)))

    def set_tags(self, run_id, tags):
        if "bad" in tags:
            raise MlflowException("tag value too long", error_code=INVALID_PARAMETER_VALUE)
        self._check()
        self.calls.append(("tags", run_id, dict(tags)))

    def end_run(self, run_id, status):
        self._check()
        self.calls.append(("end_run", run_id, status))


@pytest.fixture
def outbox():
    store, notes = Store(), []
    box = Outbox(
        "http://127.0.0.1:5000",
        on_note=lambda event, **fields: notes.append((event, fields)),
        max_backoff_s=0.2,
        connect=lambda uri: store,
    )
    yield box, store, notes
    box.close(1)


def test_operations_reach_the_store_in_order_with_parents_resolved(outbox):
    box, store, _ = outbox
    experiment = box.experiment("digits")
    parent = box.start_run(experiment, "pipeline", {})
    child = box.start_run(experiment, "train", {}, parent=parent)
    box.log_metrics(child, {"loss": 0.5}, step=3)
    box.end_run(child, "FINISHED")

    assert box.flush(5)
    assert store.calls == [
        ("start_run", "pipeline", None),
        ("start_run", "train", "run1"),
        ("metrics", "run2", [("loss", 0.5, 3)]),
        ("end_run", "run2", "FINISHED"),
    ]
    assert (parent.id, child.id) == ("run1", "run2")


def test_a_run_started_with_params_gets_them_in_the_same_operation_even_after_an_outage(outbox):
    box, store, notes = outbox
    experiment = box.experiment("e")
    assert box.flush(5)
    store.down.set()
    run = box.start_run(experiment, "trial_00002", {}, params={"lr": 0.05})
    time.sleep(0.3)
    store.down.clear()

    assert box.flush(5)
    assert store.calls == [("start_run", "trial_00002", None), ("params", run.id, {"lr": 0.05})]
    assert [str(event) for event, _ in notes] == ["tracking_unavailable", "tracking_recovered"]


def test_consecutive_metric_batches_of_a_run_are_sent_as_one_request(outbox):
    box, store, _ = outbox
    run = box.start_run(box.experiment("e"), "train", {})
    assert box.flush(5)
    store.down.set()  # hold them back, so they queue up
    for epoch in range(50):
        box.log_metrics(run, {"loss": 1.0 / (epoch + 1)}, step=epoch)
    time.sleep(0.3)
    requests_before = store.requests
    store.down.clear()

    assert box.flush(5)
    sent = [c for c in store.calls if c[0] == "metrics"]
    assert len(sent) == 1 and [step for _, _, step in sent[0][2]] == list(range(50))
    assert store.requests - requests_before <= 2  # the retried request, and nothing per epoch


def test_an_outage_is_retried_with_backoff_announced_once_and_nothing_is_lost(outbox):
    box, store, notes = outbox
    run = box.start_run(box.experiment("e"), "train", {})
    assert box.flush(5)
    store.down.set()
    started = time.monotonic()
    for epoch in range(5):
        box.log_metrics(run, {"val_accuracy": epoch / 10}, step=epoch)
    box.end_run(run, "FINISHED")
    assert not box.flush(0.5) and box.pending == 6  # calls return at once; the backlog waits
    assert time.monotonic() - started < 1.0
    store.down.clear()

    assert box.flush(5)
    assert [e for e, _ in notes] == ["tracking_unavailable", "tracking_recovered"]
    assert "ConnectionError" in notes[0][1]["error"]
    steps = [step for c in store.calls if c[0] == "metrics" for _, _, step in c[2]]
    assert steps == [0, 1, 2, 3, 4] and store.calls[-1] == ("end_run", "run1", "FINISHED")


def test_an_operation_mlflow_rejects_is_dropped_with_a_note_and_the_rest_go_on(outbox):
    box, store, notes = outbox
    run = box.start_run(box.experiment("e"), "train", {})
    box.set_tags(run, {"bad": "x" * 10})
    box.end_run(run, "FINISHED")

    assert box.flush(5)
    assert [e for e, _ in notes] == ["tracking_dropped"]
    assert notes[0][1]["operation"] == "tags" and "too long" in notes[0][1]["error"]
    assert store.calls[-1] == ("end_run", "run1", "FINISHED")


def test_close_gives_up_after_its_deadline_and_counts_what_was_lost(outbox):
    box, store, _ = outbox
    run = box.start_run(box.experiment("e"), "train", {})
    assert box.flush(5)
    store.down.set()
    box.log_metrics(run, {"loss": 1.0}, step=0)
    box.end_run(run, "FINISHED")

    started = time.monotonic()
    lost = box.close(0.5)
    assert lost == 2 and time.monotonic() - started < 2
