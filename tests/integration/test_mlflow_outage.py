"""A real `mlflow server`, stopped while a step trains and started again: training goes on, the
run says MLflow is unreachable and then that it caught up, and every epoch's metrics are in
MLflow at the end.

The pipeline is declared here: a train step (one worker) that reports an epoch every 0.2 s
until the test has seen the outage end, then a task step that starts its MLflow run after it.
``rto run`` runs in this process, on the module's local Ray, while the test drives the server.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from pydantic import Field

from raytrain_orch import Params, Pipeline, StepContext
from raytrain_orch.cli.main import main
from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.conftest import free_port, write_config
from tests.mlflow_server import Server

pytestmark = pytest.mark.integration

pipeline = Pipeline("outage")


class TrainParams(Params):
    stop_file: str = Field(description="Once this file exists, the epoch at hand is the last.")
    epoch_s: float = Field(0.2, ge=0, description="Each epoch's length.")
    max_epochs: int = Field(2000, ge=1, description="A bound, should the test never stop it.")


@pipeline.train(params=TrainParams)
def train(ctx, params: TrainParams) -> None:
    for epoch in range(params.max_epochs):
        time.sleep(params.epoch_s)
        last = Path(params.stop_file).exists() or epoch == params.max_epochs - 1
        ctx.report({"loss": 1.0 / (epoch + 1), "epoch": epoch}, state={"epoch": epoch} if last else None)
        if last:
            break


@pipeline.task
def after(ctx: StepContext, train) -> dict[str, float]:
    return {"done": 1.0}


def _wait_for(condition, what: str, timeout_s: float = 120):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s")


@pytest.fixture(scope="module")
def outage(local_ray, tmp_path_factory):
    directory = tmp_path_factory.mktemp("mlflow-outage")
    server = Server(directory, free_port())
    server.start()
    try:
        yield _run_through_an_outage(directory, server)
    finally:
        server.stop()


def _run_through_an_outage(directory: Path, server: Server) -> dict:
    """`rto run` on a thread, its console kept; the server stopped at its third epoch, started
    again once five epochs went by without it, and training ended once the run says it is back."""
    stop_file = directory / "stop-training"
    config = write_config(
        directory,
        "outage",
        f"{__name__}:pipeline",
        {"train": {"scaling": {"num_workers": 1}, "params": {"stop_file": str(stop_file)}}},
        mlflow={"tracking_uri": server.uri},
    )
    store = RunStore(Storage(str(directory / "rto-runs")))
    console, result = io.StringIO(), {}

    def run() -> None:
        with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
            result["code"] = main(["run", str(config)])

    def events(name: str, after: float = 0.0) -> list[dict]:
        try:
            recorded = store.events(store.latest().run_id)
        except Exception:  # noqa: BLE001 — the run is not recorded yet
            return []
        return [e for e in recorded if e["event"] == name and e["ts"] > after]

    driver = threading.Thread(target=run, daemon=True)
    driver.start()
    try:
        _wait_for(lambda: len(events("epoch")) >= 3, "training reaches its third epoch")
        server.stop()
        stopped = time.time()
        down = _wait_for(lambda: events("tracking_unavailable"), "the run says MLflow is unreachable", 60)
        _wait_for(lambda: len(events("epoch", after=down[0]["ts"])) >= 5, "epochs while MLflow is down")
        server.start()
        restarted = time.time()
        _wait_for(lambda: events("tracking_recovered"), "the run says MLflow is back", 60)
    finally:
        stop_file.touch()
        driver.join(timeout=300)
    state = store.latest()
    return {
        "code": result.get("code"),
        "output": console.getvalue(),
        "state": state,
        "events": store.events(state.run_id),
        "stopped": stopped,
        "restarted": restarted,
        "client": MlflowClient(server.uri),
    }


def test_the_run_succeeds_through_the_outage(outage):
    assert outage["code"] == 0, outage["output"][-3000:]
    assert outage["state"].status is Status.SUCCEEDED


def test_training_went_on_while_mlflow_was_down(outage):
    events = outage["events"]
    during = [e for e in events if e["event"] == "epoch" and outage["stopped"] < e["ts"] < outage["restarted"]]
    assert len(during) >= 5, f"only {len(during)} epochs while MLflow was down"
    down = [e["ts"] for e in events if e["event"] == "tracking_unavailable" and e["ts"] < outage["restarted"]]
    back = [e["ts"] for e in events if e["event"] == "tracking_recovered" and e["ts"] > outage["stopped"]]
    assert down and back and down[0] < outage["restarted"] < back[-1]


def test_the_run_said_mlflow_was_gone_and_then_caught_up(outage):
    text = outage["output"]
    assert "WARNING MLflow unreachable" in text and "training goes on" in text
    assert "MLflow reachable again" in text


def test_every_epochs_metrics_reached_mlflow(outage):
    client, state, events = outage["client"], outage["state"], outage["events"]
    epochs = [e["epoch"] for e in events if e["event"] == "epoch"]
    assert epochs == list(range(len(epochs)))
    train = client.get_run(state.steps["train"].mlflow_run_id)
    assert train.info.status == "FINISHED"
    for metric in ("loss", "epoch_time_s"):
        steps = sorted(m.step for m in client.get_metric_history(train.info.run_id, metric))
        assert steps == epochs, metric


def test_every_mlflow_run_of_the_pipeline_finished(outage):
    client, state = outage["client"], outage["state"]
    runs = client.search_runs([state.mlflow["experiment_id"]], f"tags.`rto.run_id` = '{state.run_id}'")
    assert {r.data.tags.get("rto.step", "pipeline"): r.info.status for r in runs} == dict.fromkeys(
        ["pipeline", "train", "after"], "FINISHED"
    )
