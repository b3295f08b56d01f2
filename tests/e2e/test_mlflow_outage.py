"""A real MLflow tracking server, stopped in the middle of training and started again: training
goes on, the run says MLflow is unreachable and then that it caught up, and every epoch's
metrics are in MLflow at the end."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.conftest import REPO, free_port
from tests.e2e.mlflow_server import Server

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
EPOCHS = 150  # hidden 2048, batch 16: ~25 s of training here; the outage (a server restart, ~12 s) falls inside it


class Output:
    """A process's output lines, read on a thread, so the test can wait for one."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=lambda: self.lines.extend(process.stdout), daemon=True)
        self._thread.start()

    def wait_for(self, text: str, timeout_s: float) -> float:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if any(text in line for line in list(self.lines)):
                return time.time()
            time.sleep(0.2)
        raise AssertionError(f"never saw {text!r}; output:\n{''.join(self.lines)[-3000:]}")


@pytest.fixture(scope="module")
def outage(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mlflow-outage")
    server = Server(directory, free_port())
    server.start()
    try:
        overrides = [
            f"storage={directory / 'rto-runs'}",
            f"mlflow.tracking_uri={server.uri}",
            f"train.params.epochs={EPOCHS}",
            "train.params.hidden=2048",
            "train.params.batch_size=16",
        ]
        run = subprocess.Popen(
            [str(BIN / "rto"), "run", "configs/digits.yaml", *[a for o in overrides for a in ("--set", o)]],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output = Output(run)
        output.wait_for(f"train      epoch 5/{EPOCHS}", 300)
        server.stop()
        stopped = time.time()
        output.wait_for("MLflow unreachable", 60)
        server.start()  # takes ~12 s: training goes on meanwhile
        restarted = time.time()
        run.wait(timeout=600)
        output._thread.join(timeout=10)
        state = RunStore(Storage(str(directory / "rto-runs"))).latest()
        yield {
            "run": run,
            "output": "".join(output.lines),
            "state": state,
            "stopped": stopped,
            "restarted": restarted,
            "client": MlflowClient(server.uri),
            "directory": directory,
        }
    finally:
        server.stop()


def test_the_run_succeeds_through_the_outage(outage):
    assert outage["run"].returncode == 0, outage["output"][-3000:]
    assert outage["state"].status is Status.SUCCEEDED


def test_training_went_on_while_mlflow_was_down(outage):
    events = RunStore(Storage(str(outage["directory"] / "rto-runs"))).events(outage["state"].run_id)
    during = [e for e in events if e["event"] == "epoch" and outage["stopped"] < e["ts"] < outage["restarted"]]
    assert len(during) >= 10, f"only {len(during)} epochs while MLflow was down"
    # (A server slowed down by a loaded machine may time out before it is stopped: that is an
    # outage too, and says so the same way.)
    down = [e["ts"] for e in events if e["event"] == "tracking_unavailable" and e["ts"] < outage["restarted"]]
    back = [e["ts"] for e in events if e["event"] == "tracking_recovered" and e["ts"] > outage["stopped"]]
    assert down and back and down[0] < outage["restarted"] < back[-1]


def test_the_run_said_mlflow_was_gone_and_then_caught_up(outage):
    text = outage["output"]
    assert "WARNING MLflow unreachable" in text and "training goes on" in text
    assert "MLflow reachable again" in text


def test_every_epochs_metrics_reached_mlflow(outage):
    client, state = outage["client"], outage["state"]
    train = client.get_run(state.steps["train"].mlflow_run_id)
    assert train.info.status == "FINISHED"
    for metric in ("val_accuracy", "loss", "epoch_time_s"):
        steps = sorted(m.step for m in client.get_metric_history(train.info.run_id, metric))
        assert steps == list(range(EPOCHS)), metric


def test_every_mlflow_run_of_the_pipeline_finished(outage):
    client, state = outage["client"], outage["state"]
    runs = client.search_runs([state.mlflow["experiment_id"]], f"tags.`rto.run_id` = '{state.run_id}'")
    assert {r.data.tags.get("rto.step", "pipeline"): r.info.status for r in runs} == dict.fromkeys(
        ["pipeline", "prepare", "train", "evaluate", "register"], "FINISHED"
    )
    assert client.get_run(state.mlflow["run_id"]).data.metrics["test_accuracy"] >= 0.9
