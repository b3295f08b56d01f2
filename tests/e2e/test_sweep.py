"""A Ray Tune sweep over the digits train step, on 2 CPUs, with its driver killed mid-sweep and
`rto resume`d: the scenario runs once; the tests check what only the kill and the resume can
show. (The trial table, ASHA's early stops and a sweep's MLflow tree: tests/integration/test_sweep.py.)

Three trials over a grid of learning rates (strong, weak, strong), each a DDP run of 2 workers,
so one trial trains at a time; the driver is SIGKILLed when the third trial starts, after the
first two finished. The storage root is in S3 (moto's server): Tune's experiment state, the
trials' checkpoints and their artifacts.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from raytrain_orch.store.artifacts import MANIFEST
from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.conftest import REPO, in_bucket
from tests.sweeps import trial_runs, trial_table

pytestmark = pytest.mark.e2e

RTO = str(Path(sys.executable).parent / "rto")
EPOCHS = 6
LRS = [0.1, 0.0005, 0.05]  # grid order is trial order
SWEEP = (
    "sweep={step: train, metric: val_accuracy, mode: max, num_samples: 1, searcher: random, scheduler: asha, "
    f"grace_period: 1, reduction_factor: 2, space: {{lr: {{grid: {LRS}}}}}}}"
)


def _wait_for(process: subprocess.Popen, text: str, timeout_s: float = 400) -> str:
    seen, deadline = [], time.time() + timeout_s
    for line in process.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
        if time.time() > deadline:
            break
    raise AssertionError(f"never saw {text!r}; output:\n{''.join(seen)[-3000:]}")


def _wait_until_training_processes_are_gone(timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        names = [(p.info["cmdline"] or [""])[0] for p in psutil.process_iter(["cmdline"])]
        if not any(
            n.startswith(("ray::RayTrainWorker", "ray::TrainController", "ray::ImplicitFunc", "ray::train"))
            for n in names
        ):
            return
        time.sleep(0.5)


@pytest.fixture(scope="module")
def sweep(s3_env, tmp_path_factory):
    directory = tmp_path_factory.mktemp("sweep")
    storage, stored = in_bucket(s3_env, directory)
    overrides = [
        *stored,
        SWEEP,
        f"train.params.epochs={EPOCHS}",
        "train.params.hidden=32",
        "train.params.batch_size=32",
    ]
    sets = [arg for item in overrides for arg in ("--set", item)]
    process = subprocess.Popen(
        [RTO, "run", "configs/digits_sweep.yaml", *sets],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    before_kill = _wait_for(process, "trial 00002 started")
    process.send_signal(signal.SIGKILL)
    killed_at = time.time()
    process.wait(timeout=60)
    _wait_until_training_processes_are_gone()
    store = RunStore(Storage(storage))
    run_id = store.latest().run_id
    done = subprocess.run(
        [RTO, "resume", run_id, "--storage", storage],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return {
        "directory": directory,
        "store": store,
        "state": store.load(run_id),
        "events": store.events(run_id),
        "killed_at": killed_at,
        "before_kill": before_kill,
        "resume": done,
        "client": MlflowClient(f"sqlite:///{directory / 'mlflow.db'}"),
    }


def test_the_resumed_sweep_finishes_on_the_best_of_all_its_trials(sweep):
    done, state = sweep["resume"], sweep["state"]
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert state.status is Status.SUCCEEDED
    assert state.steps["prepare"].attempts == 1 and state.steps["train"].attempts == 2
    table = trial_table(sweep)  # the trials before the kill and after it, in one table
    best = [t for t in table if t["best"]]
    assert sorted(t["params"]["lr"] for t in table) == sorted(LRS) and len(best) == 1
    assert state.steps["train"].metrics["val_accuracy"] == pytest.approx(best[0]["val_accuracy"])
    assert state.steps["evaluate"].attempts == 1  # downstream ran once, on the best trial's model
    bucket, sweeps = sweep["store"].storage, sweep["store"].run_path(state.run_id, "sweeps")
    sweep_dir = (*sweeps, next(name for name in bucket.listdir(*sweeps) if name.startswith("train-")))
    best_artifact = bucket.read_json(*sweep_dir, "trials", best[0]["trial"], MANIFEST)
    assert state.steps["train"].artifact["checkpoint"] == best_artifact["checkpoint"]


def test_finished_trials_were_not_run_again_after_the_resume(sweep):
    started = [(e["trial"], e["ts"]) for e in sweep["events"] if e["event"] == "trial_started"]
    before = {trial for trial, ts in started if ts < sweep["killed_at"]}
    after = [trial for trial, ts in started if ts > sweep["killed_at"]]
    # The third was starting when the driver died; its trial_started may have been in the event
    # log's open segment, which a SIGKILL loses (up to RTO_EVENTS_FLUSH_S of events on S3).
    first, second, *third = sorted(before)
    assert first.endswith("00000") and second.endswith("00001") and len(third) <= 1
    assert first not in after and second not in after
    (rerun,) = sorted(set(after))  # the one the kill cut short, run again
    assert rerun.endswith("00002") and third in ([], [rerun])


def test_mlflow_closes_the_killed_attempt_and_its_trials_and_keeps_the_tree(sweep):
    state, client = sweep["state"], sweep["client"]
    assert client.get_run(state.mlflow["run_id"]).info.status == "FINISHED"
    steps = client.search_runs(
        [state.mlflow["experiment_id"]],
        f"tags.`rto.run_id` = '{state.run_id}' AND tags.`rto.step` = 'train' AND tags.`rto.kind` = 'train'",
    )
    by_attempt = {r.data.tags["rto.attempt"]: r for r in steps}
    assert {a: r.info.status for a, r in by_attempt.items()} == {"1": "KILLED", "2": "FINISHED"}
    assert all(r.data.tags["mlflow.parentRunId"] == state.mlflow["run_id"] for r in steps)
    trials = trial_runs(sweep)
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} <= {r.info.run_id for r in steps}
    assert {float(r.data.params["lr"]) for r in trials} == set(LRS)
    assert all(r.info.status in ("FINISHED", "KILLED") for r in trials)  # none left RUNNING
    killed = [r for r in trials if r.info.status == "KILLED"]
    assert [r.data.tags["rto.attempt"] for r in killed] == ["1"] * len(killed)  # cut short by the kill
    best = [r for r in trials if r.data.tags.get("rto.best") == "true"]
    assert len(best) == 1 and by_attempt["2"].data.tags["rto.best_trial"] == best[0].data.tags["rto.trial"]
