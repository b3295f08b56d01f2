"""The README's cluster path, for real: ``ray start --head`` on 127.0.0.1 (with Ray's default
token authentication), ``ray job submit --working-dir .``, and ``rto run --address``.

The head runs in its own process group with ``--block`` and is stopped by that group's id
(see ``ray_nodes``).
"""

from __future__ import annotations

import re
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO
from tests.e2e.ray_nodes import BIN, env, ray_cli, ray_node

pytestmark = pytest.mark.e2e

@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A one-node Ray cluster on 127.0.0.1; yields (gcs address, dashboard URL)."""
    with ray_node(tmp_path_factory.mktemp("head"), num_cpus=2) as addresses:
        yield addresses


def _pipeline_runs(tracking_uri: str) -> dict[str, object]:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("digits")
    runs = client.search_runs([experiment.experiment_id])
    return {r.data.tags.get("rto.step", "pipeline"): r for r in runs}


def test_ray_job_submit_runs_the_pipeline_on_the_cluster(head, tmp_path):
    _, dashboard = head
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [
        str(BIN / "ray"), "job", "submit", "--address", dashboard, "--working-dir", ".", "--",
        "python", "-m", "raytrain_orch", "run", "configs/digits.yaml",
        "--set", f"storage={tmp_path / 'rto-runs'}", "--set", f"mlflow.tracking_uri={tracking_uri}",
        "--set", "train.params.epochs=10",
    ]
    done = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True, timeout=420)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    submission_id = re.search(r"Job '(raysubmit_\w+)' succeeded", output).group(1)

    status = re.sub(r"\x1b\[[0-9;]*m", "", ray_cli("job", "status", "--address", dashboard, submission_id).stdout)
    assert f"Job '{submission_id}' succeeded" in status
    runs = _pipeline_runs(tracking_uri)
    parent = runs.pop("pipeline")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["rto.ray_job_id"] == submission_id
    assert sorted(runs) == ["evaluate", "prepare", "register", "train"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id and r.info.status == "FINISHED" for r in runs.values())
    assert parent.data.metrics["test_accuracy"] >= 0.9


def test_rto_run_address_joins_an_existing_cluster(head, tmp_path):
    gcs_address, _ = head
    storage = tmp_path / "rto-runs"
    command = [
        str(BIN / "rto"), "run", "configs/digits.yaml", "--address", gcs_address,
        "--set", f"storage={storage}", "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "--set", "train.params.epochs=3",
    ]
    done = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "SUCCEEDED" in done.stdout and "train      epoch 3/3" in done.stdout

    status = subprocess.run([str(BIN / "rto"), "runs", "--json", "--storage", str(storage)], env=env(), capture_output=True, text=True, timeout=60)
    import json

    runs = json.loads(status.stdout)
    assert [r["status"] for r in runs] == ["SUCCEEDED"] and runs[0]["pipeline"] == "digits"
