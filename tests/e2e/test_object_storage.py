"""The digits pipeline on a cluster whose nodes share no filesystem, its storage root in S3.

A real S3 API (moto's server on 127.0.0.1), a real `mlflow server` whose artifacts go to the
same S3 server, and two real Ray nodes: the head, where the driver runs, and a node with its own
empty /tmp (a private mount namespace), where every step runs (it alone has the custom resource
``far`` the steps ask for). Whatever a step leaves in a local path, the driver never sees: it
reads only what went through the object store.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.conftest import REPO, free_port
from tests.e2e.ray_nodes import BIN, env, private_tmp_works, ray_node
from tests.mlflow_server import Server
from tests.object_store import ACCESS_KEY, SECRET_KEY

pytestmark = pytest.mark.e2e

EPOCHS = 10


def _config(directory: Path, storage: str, tracking_uri: str) -> Path:
    """configs/digits.yaml with every step on the node that has the ``far`` resource."""
    config = yaml.safe_load((REPO / "configs/digits.yaml").read_text())
    config.update(storage=storage, mlflow={**config["mlflow"], "tracking_uri": tracking_uri})
    steps = config["steps"]
    for name in ("prepare", "evaluate", "register"):
        steps[name]["resources"] = {"CPU": 1, "far": 1}
    steps["train"]["params"]["epochs"] = EPOCHS
    steps["train"]["scaling"]["resources_per_worker"] = {"CPU": 1, "far": 1}
    path = directory / "digits-far.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def cloud(s3_env, tmp_path_factory):  # this process reaches the bucket as the nodes and the driver do
    s3 = s3_env
    directory = tmp_path_factory.mktemp("s3")  # short: Ray's socket paths live below it
    bucket = s3.bucket()
    storage = f"s3://{bucket}/rto"
    mlflow_server = Server(directory, free_port(), artifacts=f"s3://{bucket}/mlflow", env=s3.env())
    mlflow_server.start()
    node_env = s3.env()  # a cloud node's credentials, as its role or image would give them
    driver_env = env(**s3.env())

    def rto(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "rto"), *args], cwd=REPO, env=driver_env, capture_output=True, text=True, timeout=timeout
        )

    try:
        with (
            ray_node(directory / "h", num_cpus=1, extra_env=node_env) as (gcs, _),
            ray_node(
                directory / "f",
                num_cpus=2,
                head_address=gcs,
                resources={"far": 2},
                extra_env=node_env,
                private_tmp=private_tmp_works(),
            ),
        ):
            config = str(_config(directory, storage, mlflow_server.uri))
            first = rto("run", config, "--address", gcs)
            second = rto("run", config, "--address", gcs)
        store = RunStore(Storage(storage))
        first_id = store.list()[-1].run_id  # the oldest: the run that computed
        cli = {
            "runs": rto("runs", "--storage", storage, timeout=120),
            "status": rto("status", first_id, "--storage", storage, timeout=120),
            "checkpoints": rto("checkpoints", first_id, "--storage", storage, timeout=120),
            "logs": rto("logs", first_id, "--step", "train", "--rank", "0", "--storage", storage, timeout=120),
        }
        yield {
            "directory": directory,
            "bucket": bucket,
            "storage": storage,
            "store": store,
            "first": first,
            "second": second,
            "first_id": first_id,
            "cli": cli,
            "mlflow": mlflow_server,
            "s3": s3,
        }
    finally:
        mlflow_server.stop()


def test_the_pipeline_succeeds_with_every_step_on_the_node_that_shares_no_disk(cloud):
    first = cloud["first"]
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    state = cloud["store"].load(cloud["first_id"])
    assert state.status is Status.SUCCEEDED
    assert state.steps["evaluate"].metrics["test_accuracy"] >= 0.9
    assert not (cloud["directory"] / "rto-runs").exists()  # nothing went to a local path here
    keys = cloud["s3"].keys(cloud["bucket"], f"rto/runs/{cloud['first_id']}/")
    assert any(k.endswith("/state.pt") for k in keys)  # Ray Train's checkpoints, uploaded from the far node
    assert {f"rto/runs/{cloud['first_id']}/logs/train/attempt-1.rank-{r}.log" for r in (0, 1)} <= set(keys)


def test_the_cached_rerun_reads_every_step_from_the_bucket(cloud):
    second = cloud["second"]
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    for step in ("prepare", "train", "evaluate", "register"):
        assert f"{step:<10} cached" in second.stdout
    rerun = cloud["store"].latest()
    assert rerun.run_id != cloud["first_id"] and rerun.status is Status.SUCCEEDED


def test_the_model_is_registered_with_its_files_in_the_bucket_and_loads_from_there(cloud):
    import mlflow
    from mlflow.tracking import MlflowClient

    from jobs.digits import to_tensors

    client = MlflowClient(cloud["mlflow"].uri)
    version = client.get_model_version_by_alias("digits", "champion")
    assert version.version == "1"
    keys = cloud["s3"].keys(cloud["bucket"], "mlflow/")
    assert any(k.endswith("/MLmodel") for k in keys), keys[:20]
    mlflow.set_tracking_uri(cloud["mlflow"].uri)
    model = mlflow.pytorch.load_model("models:/digits@champion")  # through the server, from S3
    prepare = cloud["store"].load(cloud["first_id"]).steps["prepare"].artifact
    x, y = to_tensors(Storage(prepare["storage_uri"]).read_table(*prepare["path"], "test.parquet"))
    accuracy = float(np.mean(model(x).argmax(dim=1).numpy() == y.numpy()))
    assert accuracy >= 0.9


def test_the_cli_reads_runs_status_checkpoints_and_logs_from_the_bucket(cloud):
    cli, first_id = cloud["cli"], cloud["first_id"]
    assert all(done.returncode == 0 for done in cli.values()), {k: v.stderr[-500:] for k, v in cli.items()}
    assert first_id in cli["runs"].stdout and "SUCCEEDED" in cli["runs"].stdout
    status = cli["status"].stdout
    assert f"s3://{cloud['bucket']}/rto/cache/prepare/" in status and "test_accuracy=" in status
    checkpoints = cli["checkpoints"].stdout
    rows = [line.split() for line in checkpoints.splitlines() if line.startswith("train-")]
    assert len(rows) == 2 and all(row[3] == "yes" for row in rows), checkpoints  # num_to_keep: 2, both verified
    assert f"(epoch {EPOCHS - 1})" in checkpoints.splitlines()[-1]  # latest good: the last epoch's
    assert "train" in cli["logs"].stdout and "rank 0" in cli["logs"].stdout, cli["logs"].stdout[-2000:]


def test_credentials_are_in_no_output_record_log_or_mlflow_run(cloud):
    s3, bucket = cloud["s3"], cloud["bucket"]
    texts = [cloud[k].stdout + cloud[k].stderr for k in ("first", "second")]
    texts += [done.stdout + done.stderr for done in cloud["cli"].values()]
    texts += [s3.read(bucket, key).decode(errors="replace") for key in s3.keys(bucket, "rto/") if "/cache/" not in key]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cloud["mlflow"].uri)
    experiment = client.get_experiment_by_name("digits")
    for run in client.search_runs([experiment.experiment_id]):
        texts.append(json.dumps({"params": run.data.params, "tags": run.data.tags}))
    assert len(texts) > 20
    leaked = [text[:200] for text in texts if SECRET_KEY in text or ACCESS_KEY in text]
    assert leaked == []
