"""The `rto` command as a user types it: the MLflow UI it serves, and `rto stop` of a run driven
here. (`rto plan`, which starts no Ray: tests/unit/test_cli_plan.py.)"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, isolated

pytestmark = pytest.mark.e2e

RTO = str(Path(sys.executable).parent / "rto")


def _rto(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([RTO, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_ui_serves_mlflow_and_prints_a_deep_link_to_the_runs(tmp_path):
    port = free_port()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    process = subprocess.Popen(
        [RTO, "ui", "--tracking-uri", uri, "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        link = next(line for line in process.stdout if line.startswith("MLflow UI:"))  # printed once serving
        assert f"http://127.0.0.1:{port}/" in link
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            assert response.status == 200  # the link works the moment it is printed
    finally:
        process.terminate()  # SIGTERM to rto alone: it must stop the server it started
        process.wait(timeout=60)
    with pytest.raises(OSError):  # nothing left serving
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)


def test_rto_stop_during_training_ends_the_run_and_its_mlflow_runs_killed(tmp_path):
    """A stopped driver never leaves its run, or any MLflow run of it, RUNNING. `rto stop RUN_ID`
    stops a locally driven run with SIGTERM to its driver, as a closed terminal or a scheduler would."""
    from mlflow.tracking import MlflowClient

    from raytrain_orch.store.state import RunStore, Status
    from raytrain_orch.store.storage import Storage

    overrides = [*isolated(tmp_path), "train.params.epochs=200"]
    process = subprocess.Popen(
        [RTO, "run", "configs/digits.yaml", *sum((["--set", s] for s in overrides), [])],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 240
        for line in process.stdout:  # wait until training is under way
            if "train      epoch 2/200" in line or time.time() > deadline:
                break
        run_id = RunStore(Storage(str(tmp_path / "rto-runs"))).latest().run_id
        stopped = subprocess.run(
            [RTO, "stop", run_id, "--storage", str(tmp_path / "rto-runs")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        output = process.communicate(timeout=120)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output[-3000:]
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"SIGTERM to its driver (pid {process.pid})" in stopped.stderr
    assert stopped.stdout.strip() == f"run {run_id} KILLED — stopped by SIGTERM (rto stop, ray job stop, or the system)"

    state = RunStore(Storage(str(tmp_path / "rto-runs"))).latest()
    assert state.status is Status.KILLED
    assert state.steps["prepare"].status is Status.SUCCEEDED and state.steps["train"].status is Status.KILLED
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([state.mlflow["experiment_id"]], f"tags.`rto.run_id` = '{state.run_id}'")
    statuses = {r.data.tags.get("rto.step", "pipeline"): r.info.status for r in runs}
    assert statuses == {"pipeline": "KILLED", "prepare": "FINISHED", "train": "KILLED"}
