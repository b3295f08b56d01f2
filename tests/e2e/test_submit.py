"""``rto submit`` against a real cluster made on this machine: ``ray start --head`` on 127.0.0.1
with Ray's default token authentication, its jobs API on the dashboard port. Every command is
the ``rto`` CLI as a user runs it; faults are real (the job's driver process is SIGKILLed).

The test configs live in the project (``tests/pipelines/*.yaml``), since a job ships the
project's working dir; storage and MLflow go to each test's tmp dir through ``--set``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.conftest import REPO, free_port
from tests.e2e.ray_nodes import BIN, env, ray_node

pytestmark = pytest.mark.e2e

SECRET = "hunter2-7f3a9c"  # the step's API token, passed with --set
ENV_SECRET = "env-tok-51d0e8"  # a token passed through with --env


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    # A runtime env that fails to set up fails once, not Ray's default three times (an operator's
    # setting on the node; it spares the failing --pip test two pip runs and changes nothing else).
    with ray_node(tmp_path_factory.mktemp("head"), num_cpus=2, extra_env={"RUNTIME_ENV_RETRY_TIMES": "1"}) as (_, url):
        yield url


def rto(*args: str, timeout: float = 300, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "rto"), *args], cwd=REPO, env=env(**extra_env), capture_output=True, text=True, timeout=timeout
    )


def isolated(tmp_path: Path) -> list[str]:
    return [
        "--set",
        f"storage={tmp_path / 'rto-runs'}",
        "--set",
        "storage_options.shared_mount=true",  # the test's nodes share this machine's disk
        "--set",
        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]


def run_id_of(output: str) -> str:
    return next(line.split("submitted run ")[1].split()[0] for line in output.splitlines() if "submitted run " in line)


def jobs_of(dashboard: str, run_id: str) -> list[dict]:
    listed = json.loads(rto("jobs", "--address", dashboard, "--json", timeout=60).stdout)
    return [j for j in listed if j["run_id"] == run_id]


def mlflow_runs(tmp_path: Path, experiment: str) -> dict[str, object]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return {r.data.tags.get("rto.step", "pipeline"): r for r in client.search_runs([found.experiment_id])}


def wait_for_epoch(storage: Path, epoch: int, timeout_s: float = 180) -> str:
    """Wait until the (only) run under ``storage`` has reported ``epoch``; return its run id."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for events in storage.glob("runs/*/events.jsonl"):
            if any(
                json.loads(line).get("epoch", -1) >= epoch
                for line in events.read_text().splitlines()
                if '"event": "epoch"' in line
            ):
                return events.parent.name
        time.sleep(0.5)
    raise TimeoutError(f"no run under {storage} reached epoch {epoch}")


def test_submit_wait_runs_the_pipeline_as_a_ray_job_with_secrets_kept_out_of_logs_and_mlflow(dashboard, tmp_path):
    done = rto(
        "submit",
        "tests/pipelines/secretive.yaml",
        "--address",
        dashboard,
        "--wait",
        "--set",
        f"steps.fetch.params.api_token={SECRET}",
        "--env",
        "SOURCE_API_TOKEN",
        *isolated(tmp_path),
        SOURCE_API_TOKEN=ENV_SECRET,
    )
    output = done.stdout + done.stderr

    assert done.returncode == 0, output[-4000:]
    run_id = run_id_of(done.stderr)
    job_id = f"rto-{run_id}-1"
    assert f"submitted run {run_id} as Ray job {job_id}" in done.stderr
    assert f"run {run_id} SUCCEEDED" in done.stdout  # the driver's log, streamed
    # The MLflow runs carry the Ray job's id; the step got both secrets; MLflow shows neither.
    runs = mlflow_runs(tmp_path, "secretive")
    assert sorted(runs) == ["fetch", "pipeline"]
    assert all(r.info.status == "FINISHED" and r.data.tags["rto.ray_job_id"] == job_id for r in runs.values())
    fetch = runs["fetch"]
    assert fetch.data.metrics["token_length"] == len(SECRET) and fetch.data.metrics["env_token_length"] == len(
        ENV_SECRET
    )
    assert fetch.data.params["api_token"] == "***"
    # Neither secret is in anything rto or Ray shows: the submit output, the job's log, the job list.
    job_log = rto("logs", job_id, "--address", dashboard, timeout=60).stdout
    listed = rto("jobs", "--address", dashboard, timeout=60)
    assert f"run {run_id} SUCCEEDED" in job_log
    # The step printed and logged both secrets carelessly: masked where it runs, so in its own log
    # (and in Ray's worker logs, which the job's log may forward).
    step_log = rto("logs", run_id, "--storage", str(tmp_path / "rto-runs"), timeout=60).stdout
    assert "fetching 10 rows with token ***" in step_log and "source token from the environment: ***" in step_log
    for shown in (output, job_log, step_log, listed.stdout, json.dumps(jobs_of(dashboard, run_id))):
        assert SECRET not in shown and ENV_SECRET not in shown
    assert any(line.startswith(job_id) and " SUCCEEDED " in line for line in listed.stdout.splitlines())


def test_a_killed_driver_is_resubmitted_as_resume_and_finishes_without_redoing_finished_work(dashboard, tmp_path):
    submitter = subprocess.Popen(
        [
            str(BIN / "rto"),
            "submit",
            "tests/pipelines/whole.yaml",
            "--address",
            dashboard,
            "--retries",
            "1",
            # A lease that outlives the test unless released: a resubmitted job that gets its gang
            # at all did not wait out the dead driver's.
            "--env",
            "RTO_LEASE_TTL_S=3600",
            *isolated(tmp_path),
        ],
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    storage = tmp_path / "rto-runs"
    run_id = wait_for_epoch(storage, 2)
    store = RunStore(Storage(str(storage)))
    driver = store.load(run_id).driver
    assert driver["ray_job_id"] == f"rto-{run_id}-1"
    os.kill(driver["pid"], signal.SIGKILL)  # the job's driver process, as the OOM killer or a lost node would
    out, err = submitter.communicate(timeout=300)

    assert submitter.returncode == 0, (out + err)[-4000:]
    assert f"resubmitting as `rto resume {run_id}` (job retry 1/1)" in err
    assert [(j["submission_id"], j["status"]) for j in jobs_of(dashboard, run_id)] == [
        (f"rto-{run_id}-1", "FAILED"),
        (f"rto-{run_id}-2", "SUCCEEDED"),
    ]
    state = store.load(run_id)
    assert state.status is Status.SUCCEEDED and state.driver["ray_job_id"] == f"rto-{run_id}-2"
    assert state.steps["first"].attempts == 1  # finished before the kill: not run again
    events = store.events(run_id)
    (resumed,) = [e for e in events if e["event"] == "run_resumed"]
    assert resumed["kept"] == ["first"]
    (restored,) = [e for e in events if e["event"] == "restored"]
    assert restored["epoch"] >= 1  # training went on from its checkpoint, not from epoch 0
    runs = mlflow_runs(tmp_path, "whole")
    assert runs["pipeline"].info.status == "FINISHED"


def test_a_user_code_failure_is_not_retried(dashboard, tmp_path):
    done = rto("submit", "tests/pipelines/failing.yaml", "--address", dashboard, "--retries", "2", *isolated(tmp_path))

    assert done.returncode == 1, done.stdout + done.stderr
    run_id = run_id_of(done.stderr)
    assert "not retried" in done.stderr.strip().splitlines()[-1]
    assert [j["status"] for j in jobs_of(dashboard, run_id)] == ["FAILED"]  # one job: nothing resubmitted


def test_rto_stop_ends_the_job_the_run_and_its_mlflow_runs_killed(dashboard, tmp_path):
    submitted = rto("submit", "tests/pipelines/whole.yaml", "--address", dashboard, *isolated(tmp_path))
    assert submitted.returncode == 0, submitted.stderr
    run_id = wait_for_epoch(tmp_path / "rto-runs", 1)

    stopped = rto("stop", run_id, "--address", dashboard, "--storage", str(tmp_path / "rto-runs"))

    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"job rto-{run_id}-1 STOPPED" in stopped.stdout
    assert f"run {run_id} KILLED" in stopped.stdout
    state = RunStore(Storage(str(tmp_path / "rto-runs"))).load(run_id)
    assert state.status is Status.KILLED and state.steps["train"].status is Status.KILLED
    runs = mlflow_runs(tmp_path, "whole")
    assert runs["pipeline"].info.status == "KILLED" and runs["train"].info.status == "KILLED"
    assert runs["first"].info.status == "FINISHED"


@pytest.mark.parametrize("token", ["wrong", None])
def test_a_wrong_or_missing_token_exits_2_saying_how_to_fix_it(dashboard, tmp_path, token):
    credentials = (
        {"RAY_AUTH_TOKEN": token}
        if token
        else {"RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none"), "HOME": str(tmp_path)}
    )
    before = len(json.loads(rto("jobs", "--address", dashboard, "--json", "--all", timeout=60).stdout))

    done = rto("submit", "configs/digits.yaml", "--address", dashboard, *isolated(tmp_path), **credentials)

    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()  # one line, no traceback
    expected = "refused the token from RAY_AUTH_TOKEN" if token else "requires a token and none was found"
    assert line.startswith(f"rto: error: the Ray cluster at {dashboard} {expected}")
    assert "ray get-auth-token" in line and "RAY_AUTH_TOKEN" in line
    assert (
        len(json.loads(rto("jobs", "--address", dashboard, "--json", "--all", timeout=60).stdout)) == before
    )  # nothing submitted


# --- a failed submission names its cause --------------------------------------------------------


def test_a_module_the_clusters_python_lacks_is_named_with_the_fix(dashboard, tmp_path):
    dependency = tmp_path / "site"
    dependency.mkdir()
    (dependency / "rto_local_only_dep.py").write_text("")  # this machine has it; the cluster does not
    done = rto("submit", "tests/pipelines/local_only.yaml", "--address", dashboard, "--wait", *isolated(tmp_path),
               PYTHONPATH=str(dependency))  # fmt: skip

    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "FAILED: the cluster's Python lacks module 'rto_local_only_dep' (the job failed before its pipeline" in last
    assert "or submit with --pip rto_local_only_dep" in last


def test_a_pip_requirement_that_cannot_install_is_named(dashboard, tmp_path):
    done = rto("submit", "tests/pipelines/failing.yaml", "--address", dashboard, "--wait", "--pip",
               "rto-no-such-package-4e1f==9.9", *isolated(tmp_path), timeout=400)  # fmt: skip

    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "--pip could not install on the cluster:" in last and "rto-no-such-package-4e1f" in last


@pytest.mark.parametrize("unreachable", ["storage", "mlflow"])
def test_a_storage_root_or_mlflow_server_the_cluster_cannot_reach_fails_at_once_naming_it(
    dashboard, tmp_path, unreachable
):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    where = (
        ["--set", "storage=s3://rto-unreachable/runs", "--set", f"storage_options.endpoint_url={closed}"]
        if unreachable == "storage"
        else ["--set", f"mlflow.tracking_uri={closed}"]
    )
    credentials = ["--env", "AWS_ACCESS_KEY_ID=none", "--env", "AWS_SECRET_ACCESS_KEY=none"]
    done = rto("submit", "tests/pipelines/failing.yaml", "--address", dashboard, "--wait", *isolated(tmp_path), *where,
               *credentials, timeout=400)  # fmt: skip

    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    if unreachable == "storage":
        assert "the storage root s3://rto-unreachable/runs cannot be written from this node" in last
    else:
        assert f"the MLflow server {closed} cannot be reached from this node" in last
    assert " started" not in done.stdout  # it failed before any step ran
