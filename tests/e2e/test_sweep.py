"""A Ray Tune sweep over the digits train step, on 2 CPUs, with its driver killed mid-sweep and
`rto resume`d: the scenario runs once; the tests check what a user would look at afterwards.

Four trials over a grid of learning rates (two that learn, two that barely move), each a DDP run
of 2 workers, so one trial trains at a time. ASHA (grace 1 epoch) stops the weak ones once a
strong one has set the bar; the driver is SIGKILLed when the third trial starts. The storage root
is in S3 (moto's server): Tune's experiment state, the trials' checkpoints and their artifacts.
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

pytestmark = pytest.mark.e2e

RTO = str(Path(sys.executable).parent / "rto")
EPOCHS = 12
LRS = [0.1, 0.0005, 0.05, 0.0003]  # grid order is trial order: strong, weak, strong, weak
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


def _table(sweep) -> list[dict]:
    return [e for e in sweep["events"] if e["event"] == "sweep_finished"][-1]["trials"]


def _trial_runs(sweep) -> list:
    state, client = sweep["state"], sweep["client"]
    return client.search_runs(
        [state.mlflow["experiment_id"]], f"tags.`rto.run_id` = '{state.run_id}' AND tags.`rto.kind` = 'trial'"
    )


def test_the_resumed_sweep_finishes_and_registers_the_best_model(sweep):
    done, state = sweep["resume"], sweep["state"]
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert state.status is Status.SUCCEEDED
    assert state.steps["prepare"].attempts == 1 and state.steps["train"].attempts == 2
    table = _table(sweep)
    best = [t for t in table if t["best"]]
    assert len(table) == len(LRS) and len(best) == 1
    assert best[0]["params"]["lr"] in (0.1, 0.05) and best[0]["status"] == "finished"
    assert best[0]["val_accuracy"] == max(t["val_accuracy"] for t in table if t["status"] == "finished")
    assert state.steps["train"].metrics["val_accuracy"] == pytest.approx(best[0]["val_accuracy"])
    # Downstream ran once, on the best trial's model.
    assert state.steps["evaluate"].attempts == 1 and state.steps["evaluate"].metrics["test_accuracy"] >= 0.9
    bucket, sweeps = sweep["store"].storage, sweep["store"].run_path(state.run_id, "sweeps")
    sweep_dir = (*sweeps, next(name for name in bucket.listdir(*sweeps) if name.startswith("train-")))
    best_artifact = bucket.read_json(*sweep_dir, "trials", best[0]["trial"], MANIFEST)
    assert state.steps["train"].artifact["checkpoint"] == best_artifact["checkpoint"]
    version = int(state.steps["register"].metrics["registered_version"])
    assert sweep["client"].get_model_version("digits", str(version)).status == "READY"


def test_asha_stopped_the_weak_trials_after_fewer_epochs(sweep):
    stopped = [t for t in _table(sweep) if t["status"] == "stopped"]
    assert stopped and all(t["params"]["lr"] < 0.001 and t["epochs"] < EPOCHS for t in stopped)
    finished = [t for t in _table(sweep) if t["status"] == "finished"]
    assert all(t["epochs"] == EPOCHS for t in finished)
    ended = {(e["event"], e["trial"]) for e in sweep["events"] if e["event"] in ("trial_finished", "trial_stopped")}
    assert ended == {("trial_finished", t["trial"]) for t in finished} | {
        ("trial_stopped", t["trial"]) for t in stopped
    }
    runs = {r.data.tags["rto.trial"]: r for r in _trial_runs(sweep)}
    for t in stopped:
        run = runs[t["trial"]]
        assert run.info.status == "FINISHED" and run.data.tags["rto.stopped_early"] == "true"
        assert len(sweep["client"].get_metric_history(run.info.run_id, "val_accuracy")) < EPOCHS


def test_finished_trials_were_not_run_again_after_the_resume(sweep):
    started = [(e["trial"], e["ts"]) for e in sweep["events"] if e["event"] == "trial_started"]
    before = {trial for trial, ts in started if ts < sweep["killed_at"]}
    after = [trial for trial, ts in started if ts > sweep["killed_at"]]
    first, second, third = sorted(before)  # the third was starting when the driver died
    assert first.endswith("00000") and second.endswith("00001")
    assert first not in after and second not in after
    assert sorted(set(after)) == sorted({third, third.replace("00002", "00003")})


def test_mlflow_holds_pipeline_then_sweep_then_trial_runs(sweep):
    state, client = sweep["state"], sweep["client"]
    pipeline_run = client.get_run(state.mlflow["run_id"])
    assert pipeline_run.info.status == "FINISHED"
    steps = client.search_runs(
        [state.mlflow["experiment_id"]],
        f"tags.`rto.run_id` = '{state.run_id}' AND tags.`rto.step` = 'train' AND tags.`rto.kind` = 'train'",
    )
    by_attempt = {r.data.tags["rto.attempt"]: r for r in steps}
    assert {a: r.info.status for a, r in by_attempt.items()} == {"1": "KILLED", "2": "FINISHED"}
    assert all(r.data.tags["mlflow.parentRunId"] == state.mlflow["run_id"] for r in steps)
    trials = _trial_runs(sweep)
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} <= {r.info.run_id for r in steps}
    assert {float(r.data.params["lr"]) for r in trials} == set(LRS)
    assert all(r.info.status in ("FINISHED", "KILLED") for r in trials)  # none left RUNNING
    killed = [r for r in trials if r.info.status == "KILLED"]
    assert [r.data.tags["rto.attempt"] for r in killed] == ["1"] * len(killed)  # cut short by the kill
    best = [r for r in trials if r.data.tags.get("rto.best") == "true"]
    assert len(best) == 1 and best[0].data.tags["rto.trial"] == next(t["trial"] for t in _table(sweep) if t["best"])
    assert by_attempt["2"].data.tags["rto.best_trial"] == best[0].data.tags["rto.trial"]
    history = client.get_metric_history(best[0].info.run_id, "val_accuracy")
    assert sorted(m.step for m in history)[-1] == EPOCHS - 1  # per-epoch metrics, the epoch as MLflow step


def test_rto_status_shows_the_trial_table(sweep):
    state = sweep["state"]
    shown = subprocess.run(
        [RTO, "status", state.run_id, "--storage", sweep["store"].storage.root_uri],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"train      sweep: {len(LRS)} trials" in shown.stdout
    best = next(t for t in _table(sweep) if t["best"])
    row = next(line.split() for line in shown.stdout.splitlines() if line.split()[:1] == ["*"])
    assert row[1] == best["trial"].rsplit("_", 1)[-1] and row[2] == "finished" and f"lr={best['params']['lr']}" in row
