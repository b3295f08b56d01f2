"""The synthetic pipeline streams its data (jobs/synthetic.py): Ray Data writes the prepare step's
datasets as Parquet parts in S3 (moto's server), each train worker streams a shard per epoch, and
a Ray Train worker SIGKILLed mid-training costs the run one restart from its latest checkpoint
(uploaded to and restored from the bucket)."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from raytrain_orch import Artifact
from raytrain_orch.cli import report as cli_report
from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.conftest import REPO, in_bucket
from tests.e2e.test_faults import RTO, _train_workers, _wait_for

pytestmark = pytest.mark.e2e

EPOCHS = 8
ROWS = 40_000


@pytest.fixture(scope="module")
def streamed(s3_env, tmp_path_factory):
    storage, stored = in_bucket(s3_env, tmp_path_factory.mktemp("streaming"))
    overrides = [
        *stored,
        f"prepare.params.rows={ROWS}",
        "prepare.params.rows_per_part=10000",
        f"train.params.epochs={EPOCHS}",
        "train.params.batch_size=256",
    ]
    process = subprocess.Popen(
        [RTO, "run", "configs/synthetic.yaml", *[a for s in overrides for a in ("--set", s)]],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    before_kill = _wait_for(process, f"train      epoch 3/{EPOCHS}")
    _train_workers()[-1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    output = "".join(before_kill) + process.communicate(timeout=600)[0]
    store = RunStore(Storage(storage))
    state = store.latest()
    return {
        "store": store,
        "state": state,
        "events": store.events(state.run_id),
        "output": output,
        "returncode": process.returncode,
        "killed_at": killed_at,
        "s3": s3_env,
        "storage": storage,
    }


def test_the_streamed_run_succeeds_and_generalises(streamed):
    state = streamed["state"]
    assert streamed["returncode"] == 0, streamed["output"][-3000:]
    assert state.status is Status.SUCCEEDED
    assert state.steps["evaluate"].metrics["test_accuracy"] >= 0.85


def test_the_datasets_were_written_in_parts_to_the_bucket(streamed):
    prepare = streamed["state"].steps["prepare"].artifact
    assert prepare["datasets"] == ["train", "val", "test"] and prepare["tables"] == []
    storage = Storage(prepare["storage_uri"])
    parts = [name for name in storage.listdir(*prepare["path"], "train") if name.endswith(".parquet")]
    assert len(parts) >= ROWS // 10_000  # one or more per generated block: never one gathered file
    artifact = Artifact.from_dict(prepare)
    assert artifact.read_dataset("train").count_rows() == ROWS


def test_every_epoch_streamed_the_whole_training_split_across_the_workers(streamed):
    epochs = [e for e in streamed["events"] if e["event"] == "epoch"]
    assert epochs and all(e["perf"]["throughput_samples_per_s"] > 0 for e in epochs)
    # Each worker saw its shard: the two shards together are the split (batches may round a shard).
    seen = [e["perf"]["throughput_samples_per_s"] * e["perf"]["epoch_time_s"] for e in epochs]
    assert all(0.9 * ROWS <= s <= 1.1 * ROWS for s in seen), seen


def test_a_killed_worker_resumes_from_its_checkpoint_at_the_next_epoch(streamed):
    events, killed_at = streamed["events"], streamed["killed_at"]
    at = next(i for i, e in enumerate(events) if e["event"] == "restored" and e["ts"] > killed_at)
    restored = events[at]
    assert restored["epoch"] is not None  # a checkpoint, not a fresh start: resumed epoch > 0
    # Events are stamped when the driver records them, and an epoch reported just before the kill
    # can arrive just after it: everything recorded before the restore was reported before the kill.
    last_before = max(e["epoch"] for e in events[:at] if e["event"] == "epoch")
    # Ray Train registers reports asynchronously: at most the ones still in flight are recomputed.
    assert last_before - 2 <= restored["epoch"] <= last_before
    after = [e["epoch"] for e in events[at:] if e["event"] == "epoch"]
    assert after[0] == restored["epoch"] + 1 and after[-1] == EPOCHS - 1


def test_the_run_report_shows_the_restart_and_counts_the_recovery_as_lost(streamed):
    events, killed_at = streamed["events"], streamed["killed_at"]
    report = cli_report.load(streamed["store"], streamed["state"]).to_dict()
    train = next(step for step in report["steps"] if step["name"] == "train")
    (attempt,) = train["rows"]  # recovered inside its one attempt
    assert any(kind == "restart" and at >= killed_at - 1 for kind, at, _ in attempt["marks"]), attempt["marks"]
    # Lost: at least from the kill to the start of the first epoch trained after the restore.
    at = next(i for i, e in enumerate(events) if e["event"] == "restored" and e["ts"] > killed_at)
    first = next(e for e in events[at:] if e["event"] == "epoch")
    began = first["sent_ts"] - first["epoch_s"] - first["log_s"] - first["report_s"]
    assert train["parts"]["restart"] >= began - killed_at - 0.5 > 0, train["parts"]
    assert abs(train["unaccounted_s"]) <= 0.02 * train["wall_s"], train["parts"]
