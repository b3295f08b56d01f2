"""Real faults, real processes: SIGKILL the driver, damage the newest checkpoint, and `rto
resume`; fix a failing step and resume. The scenario runs once per module; the tests check what
survived. (A SIGKILLed Ray Train worker: tests/e2e/test_streaming.py.)

The killed driver's run keeps its storage root in S3 (moto's server, ``tests/object_store.py``):
its checkpoints are uploaded there by Ray Train, damaged there, and restored from there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.conftest import REPO, in_bucket

pytestmark = pytest.mark.e2e

RTO = str(Path(sys.executable).parent / "rto")
EPOCHS = 40


def _sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def _start_run(stored: list[str], *extra: str) -> subprocess.Popen:
    overrides = [
        *stored,
        f"train.params.epochs={EPOCHS}",
        "train.params.batch_size=16",
        *extra,
    ]
    return subprocess.Popen(
        [RTO, "run", "configs/digits.yaml", *_sets(overrides)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(process: subprocess.Popen, text: str, timeout_s: float = 300) -> list[str]:
    seen, deadline = [], time.time() + timeout_s
    for line in process.stdout:
        seen.append(line)
        if text in line:
            return seen
        if time.time() > deadline:
            break
    raise AssertionError(f"never saw {text!r}; output:\n{''.join(seen)[-3000:]}")


def _events(storage: str, run_id: str) -> list[dict]:
    return RunStore(Storage(storage)).events(run_id)


def _wait_until_training_processes_are_gone(timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        alive = [
            p
            for p in psutil.process_iter(["cmdline"])
            if (p.info["cmdline"] or [""])[0].startswith(("ray::RayTrainWorker", "ray::TrainController"))
        ]
        if not alive:
            return
        time.sleep(0.5)
    raise AssertionError(f"Ray Train processes still alive {timeout_s} s after their driver was killed")


def _train_workers() -> list[psutil.Process]:
    return [
        p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[0].startswith("ray::RayTrainWorker")
    ]


# --- the driver dies; the newest checkpoint is damaged; rto resume ----------------------------


@pytest.fixture(scope="module")
def resumed(s3_env, tmp_path_factory):
    directory = tmp_path_factory.mktemp("driver-kill")
    storage, stored = in_bucket(s3_env, directory)
    # A throwaway Ray: its processes are the run's own, and the resume must reap what the kill left
    # (tests/e2e/test_runtime.py kills a driver on the shared runtime, which stays up).
    process = _start_run(stored, "ray.runtime=throwaway")
    _wait_for(process, f"train      epoch 6/{EPOCHS}")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    _wait_until_training_processes_are_gone()  # they may train and checkpoint a moment longer
    store = RunStore(Storage(storage))
    before = store.latest()
    orphans = [pid for pid, _ in before.driver["local_ray_processes"] if psutil.pid_exists(pid)]

    # Damage the checkpoint Ray Train will hand back on resume: the latest its manager registered.
    bucket = store.storage
    checkpoints = store.run_path(before.run_id, "checkpoints")
    train_run = (*checkpoints, next(name for name in bucket.listdir(*checkpoints) if name.startswith("train-")))
    snapshot = bucket.read_json(*train_run, "checkpoint_manager_snapshot.json")
    latest = snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
    damaged_epoch = bucket.read_json(*train_run, latest, "manifest.json")["epoch"]
    state_file = bucket.read_bytes(*train_run, latest, "state.pt")
    bucket.write_bytes(state_file[: len(state_file) // 2], *train_run, latest, "state.pt")  # truncated

    client = MlflowClient(f"sqlite:///{directory / 'mlflow.db'}")

    def mlflow_statuses() -> dict[str, str]:
        runs = client.search_runs([before.mlflow["experiment_id"]], f"tags.`rto.run_id` = '{before.run_id}'")
        return {r.data.tags.get("rto.step", "pipeline"): r.info.status for r in runs}

    left_open = mlflow_statuses()
    listing = subprocess.run(
        [RTO, "runs", "--storage", storage], cwd=REPO, capture_output=True, text=True, timeout=60
    ).stdout
    reconciled = (store.load(before.run_id), mlflow_statuses())
    checkpoints = subprocess.run(
        [RTO, "checkpoints", before.run_id, "--storage", storage],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    damaged_row = next(line for line in checkpoints.splitlines() if latest in line)
    assert " NO " in damaged_row and "sha256" in damaged_row, checkpoints
    assert "latest good:" in checkpoints and latest not in checkpoints.splitlines()[-1]
    done = subprocess.run(
        [RTO, "resume", before.run_id, "--storage", storage],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    after = store.load(before.run_id)
    return directory, before, after, done, damaged_epoch, orphans, listing, left_open, reconciled, storage


def test_a_killed_driver_is_reconciled_killed_by_the_next_rto_command(resumed):
    _, before, _, _, _, _, listing, left_open, (record, statuses), _ = resumed
    assert before.status is Status.RUNNING  # what its dead driver left in state.json
    assert left_open == {"pipeline": "RUNNING", "prepare": "FINISHED", "train": "RUNNING"}  # and in MLflow
    line = next(line for line in listing.splitlines() if before.run_id in line)
    assert "KILLED" in line  # `rto runs` saw the driver was gone
    assert record.status is Status.KILLED and record.steps["train"].status is Status.KILLED
    assert f"rto resume {before.run_id}" in record.error
    assert statuses == {"pipeline": "KILLED", "prepare": "FINISHED", "train": "KILLED"}


def test_resume_finishes_the_same_run_without_rerunning_prepare(resumed):
    _, before, after, done, *_ = resumed
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert after.run_id == before.run_id and after.status is Status.SUCCEEDED
    assert (
        after.steps["prepare"].attempts == 1 and after.steps["prepare"].started_at == before.steps["prepare"].started_at
    )
    assert after.steps["train"].attempts == 2
    assert after.steps["evaluate"].metrics["test_accuracy"] >= 0.95


def test_resume_skips_the_damaged_checkpoint_and_continues_after_the_previous_good_one(resumed):
    _, before, _, _, damaged_epoch, *_, storage = resumed
    events = _events(storage, before.run_id)
    skipped = [e for e in events if e["event"] == "checkpoint_skipped"]
    assert skipped and "sha256" in skipped[0]["problem"]
    restored = [e for e in events if e["event"] == "restored"][-1]
    assert 0 <= restored["epoch"] < damaged_epoch  # the previous good one: not epoch 0, not the damaged one
    resumed_epochs = [e["epoch"] for e in events if e["event"] == "epoch" and e["ts"] > restored["ts"]]
    assert resumed_epochs[0] == restored["epoch"] + 1 and resumed_epochs[-1] == EPOCHS - 1


def test_resume_keeps_the_mlflow_parent_and_closes_the_interrupted_attempt(resumed):
    directory, before, after, *_ = resumed
    client = MlflowClient(f"sqlite:///{directory / 'mlflow.db'}")
    assert after.mlflow["run_id"] == before.mlflow["run_id"]
    assert client.get_run(after.mlflow["run_id"]).info.status == "FINISHED"
    train_runs = client.search_runs([after.mlflow["experiment_id"]], "tags.`rto.step` = 'train'")
    assert sorted((r.data.tags["rto.attempt"], r.info.status) for r in train_runs) == [
        ("1", "KILLED"),
        ("2", "FINISHED"),
    ]
    assert all(r.data.tags["mlflow.parentRunId"] == before.mlflow["run_id"] for r in train_runs)


def test_resume_removes_what_the_dead_local_ray_left_behind(resumed):
    _, before, _, _, _, orphans, *_ = resumed
    assert orphans, "a SIGKILLed driver's local Ray leaves agents behind (Ray 2.60)"
    survivors = [
        pid
        for pid in orphans
        for pid_, started in before.driver["local_ray_processes"]
        if pid == pid_ and _same(pid, started)
    ]
    assert survivors == []


def _same(pid: int, started: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - started) < 1e-3
    except psutil.NoSuchProcess:
        return False


# --- a failed run, fixed in code, resumed ------------------------------------------------------

EDITABLE = """
from raytrain_orch import Artifact, Pipeline, StepContext

pipeline = Pipeline("editable")


@pipeline.task
def source(ctx: StepContext) -> dict[str, float]:
    return {"value": 2.0}


@pipeline.task
def double(ctx: StepContext, source: Artifact) -> dict[str, float]:
    return {"value": source.metrics["value"] * BODY}
"""


def test_resume_after_fixing_the_failing_step_reruns_it_and_keeps_upstream(tmp_path):
    module = REPO / "tests" / "pipelines" / f"_edited_{os.getpid()}.py"
    from tests.conftest import write_config

    config = write_config(tmp_path, "editable", f"tests.pipelines.{module.stem}:pipeline", {})
    storage = str(tmp_path / "rto-runs")
    try:
        module.write_text(EDITABLE.replace("BODY", "undefined_name"))  # the bug: a NameError
        failed = subprocess.run([RTO, "run", str(config)], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert failed.returncode == 1 and "NameError" in failed.stdout + failed.stderr
        before = RunStore(Storage(storage)).latest()

        module.write_text(EDITABLE.replace("BODY", "3"))  # the fix
        done = subprocess.run(
            [RTO, "resume", before.run_id, "--storage", storage], cwd=REPO, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    finally:
        module.unlink(missing_ok=True)
    after = RunStore(Storage(storage)).load(before.run_id)
    assert after.steps["source"].started_at == before.steps["source"].started_at  # upstream kept, not re-run
    assert after.steps["double"].cache_key != before.steps["double"].cache_key  # the edit changed its key
    assert after.steps["double"].status is Status.SUCCEEDED and after.steps["double"].metrics["value"] == 6.0
