"""Sharded (FSDP) training under real faults, with the small model of tests/pipelines/sharded.py:

- local storage: a train worker SIGKILLed mid-training, then the driver SIGKILLed, then
  ``rto resume``;
- the S3 test server: the driver SIGKILLed, rank 1's shard of the newest checkpoint truncated
  in the bucket, then ``rto resume``.

Each scenario runs once per module; the tests check what a user would: the epoch training
resumed from, the warning naming the damaged checkpoint, the files of every rank in every
checkpoint, and the held-out accuracy of the consolidated model.
"""

from __future__ import annotations

import signal
import subprocess
import time

import psutil
import pytest

from raytrain_orch.store.checkpoint import SHARDS_DIR
from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.conftest import REPO, in_bucket, isolated
from tests.e2e.test_faults import RTO, _wait_for, _wait_until_training_processes_are_gone

pytestmark = pytest.mark.e2e

EPOCHS = 16
CONFIG = "tests/pipelines/sharded.yaml"


def _start(stored: list[str]) -> subprocess.Popen:
    overrides = [*stored, f"train.params.epochs={EPOCHS}", "train.params.epoch_s=0.5", "ray.runtime=throwaway"]
    return subprocess.Popen(
        [RTO, "run", CONFIG, *[a for s in overrides for a in ("--set", s)]],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _workers_of(driver: subprocess.Popen) -> list[psutil.Process]:
    """The Ray Train workers of this run's own (throwaway) Ray, whose raylet is the driver's child."""
    workers = [
        p
        for p in psutil.Process(driver.pid).children(recursive=True)
        if p.cmdline() and p.cmdline()[0].startswith("ray::RayTrainWorker")
    ]
    assert workers, "the run's Ray Train workers are not among its driver's descendants"
    return workers


def _kill_driver(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    _wait_until_training_processes_are_gone()


def _resume(run_id: str, storage: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RTO, "resume", run_id, "--storage", storage], cwd=REPO, capture_output=True, text=True, timeout=400
    )


def _checkpoints(storage: Storage, run_id: str) -> tuple[tuple[str, ...], dict]:
    """The train step's Ray Train run directory and its checkpoint manager's snapshot."""
    base = ("runs", run_id, "checkpoints")
    train_run = (*base, next(name for name in storage.listdir(*base) if name.startswith("train-")))
    return train_run, storage.read_json(*train_run, "checkpoint_manager_snapshot.json")


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """Local storage: a worker killed at epoch 3, the driver killed at epoch 7, resumed."""
    directory = tmp_path_factory.mktemp("sharded-local")
    process = _start(isolated(directory))
    _wait_for(process, f"train      epoch 3/{EPOCHS}")
    _workers_of(process)[-1].send_signal(signal.SIGKILL)
    worker_killed_at = time.time()
    _wait_for(process, f"train      epoch 7/{EPOCHS}")
    driver_killed_at = time.time()
    _kill_driver(process)
    storage = str(directory / "rto-runs")
    store = RunStore(Storage(storage))
    run_id = store.latest().run_id
    done = _resume(run_id, storage)
    return store, run_id, done, worker_killed_at, driver_killed_at


@pytest.fixture(scope="module")
def damaged(s3_env, tmp_path_factory):
    """S3: the driver killed at epoch 4; rank 1's shard of the newest checkpoint truncated; resumed."""
    storage, stored = in_bucket(s3_env, tmp_path_factory.mktemp("sharded-s3"))
    process = _start(stored)
    _wait_for(process, f"train      epoch 4/{EPOCHS}")
    _kill_driver(process)
    store = RunStore(Storage(storage))
    run_id = store.latest().run_id
    train_run, snapshot = _checkpoints(store.storage, run_id)
    latest = snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
    damaged_epoch = store.storage.read_json(*train_run, latest, "manifest.json")["epoch"]
    shard = (*train_run, latest, SHARDS_DIR, "__1_0.distcp")
    store.storage.write_bytes(store.storage.read_bytes(*shard)[:100], *shard)
    done = _resume(run_id, storage)
    return store, run_id, done, latest, damaged_epoch


def _restores(events: list[dict]) -> list[tuple[int, dict]]:
    return [(i, e) for i, e in enumerate(events) if e["event"] == "restored"]


def test_a_killed_worker_recomputes_at_most_one_epoch(local):
    store, run_id, _, worker_killed_at, _ = local
    events = store.events(run_id)
    at, restored = next((i, e) for i, e in _restores(events) if e["ts"] > worker_killed_at)
    last_before = max(e["epoch"] for e in events[:at] if e["event"] == "epoch")
    assert restored["epoch"] is not None and last_before - 1 <= restored["epoch"] <= last_before
    after = [e["epoch"] for e in events[at:] if e["event"] == "epoch"]
    assert after[0] == restored["epoch"] + 1


def test_a_killed_driver_resumes_from_the_sharded_checkpoint_on_local_storage(local):
    store, run_id, done, _, driver_killed_at = local
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    state = store.load(run_id)
    assert state.status is Status.SUCCEEDED and state.steps["train"].attempts == 2
    events = store.events(run_id)
    at, restored = _restores(events)[-1]
    # Training may report an epoch more between the driver's last record and the end of its processes.
    last_recorded = max(e["epoch"] for e in events if e["event"] == "epoch" and e["ts"] < driver_killed_at)
    assert restored["epoch"] >= last_recorded - 1
    after = [e["epoch"] for e in events[at:] if e["event"] == "epoch"]
    assert after[0] == restored["epoch"] + 1 and after[-1] == EPOCHS - 1
    assert state.steps["evaluate"].metrics["test_accuracy"] >= 0.9  # the consolidated model, held out


def test_a_truncated_shard_falls_back_to_the_previous_good_checkpoint_with_a_warning(damaged):
    store, run_id, done, latest, damaged_epoch = damaged
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "WARNING skipping checkpoint" in done.stdout and latest in done.stdout
    events = store.events(run_id)
    skipped = next(e for e in events if e["event"] == "checkpoint_skipped")
    assert skipped["checkpoint"].endswith(latest) and "__1_0.distcp fails its sha256 check" in skipped["problem"]
    at, restored = _restores(events)[-1]
    assert restored["epoch"] == damaged_epoch - 1  # the one before it, not a fresh start
    after = [e["epoch"] for e in events[at:] if e["event"] == "epoch"]
    assert after[0] == damaged_epoch and after[-1] == EPOCHS - 1


def test_the_resumed_run_on_s3_finishes_with_a_good_model(damaged):
    store, run_id, *_ = damaged
    state = store.load(run_id)
    assert state.status is Status.SUCCEEDED and state.steps["train"].attempts == 2
    assert state.steps["evaluate"].metrics["test_accuracy"] >= 0.9


def test_every_checkpoint_in_the_bucket_holds_every_ranks_files(damaged):
    store, run_id, *_ = damaged
    train_run, snapshot = _checkpoints(store.storage, run_id)
    names = [result["checkpoint_dir_name"] for result in snapshot["checkpoint_results"]]
    assert names
    for name in names:
        assert set(store.storage.listdir(*train_run, name, SHARDS_DIR)) == {".metadata", "__0_0.distcp", "__1_0.distcp"}
        assert {"manifest.json", "manifest.rank-00001.json", "values.pt"} <= set(
            store.storage.listdir(*train_run, name)
        )
