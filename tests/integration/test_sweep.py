"""A Ray Tune sweep over the digits train step, on the module's local Ray, run once: the trial
table, ASHA's early stops and the MLflow tree a user looks at afterwards. (A sweep whose driver
is killed and resumed: tests/e2e/test_sweep.py.)

Three trials over a grid of learning rates (one that learns, then two that barely move), one
worker each and one at a time: ASHA (grace 1 epoch) never stops the first trial to reach a rung,
and stops each weak one at its first rung, below the bar the strong one set.
"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from raytrain_orch.cli.main import main
from raytrain_orch.cli.wiring import execute
from raytrain_orch.engine.driver import prepare
from raytrain_orch.store.artifacts import MANIFEST
from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.conftest import isolated
from tests.sweeps import trial_runs, trial_table

pytestmark = pytest.mark.integration

EPOCHS = 8
LRS = [0.1, 0.0005, 0.0003]  # grid order is trial order: strong, weak, weak
SWEEP = (
    "sweep={step: train, metric: val_accuracy, mode: max, num_samples: 1, searcher: random, scheduler: asha, "
    f"grace_period: 1, reduction_factor: 2, max_concurrent_trials: 1, space: {{lr: {{grid: {LRS}}}}}}}"
)


@pytest.fixture(scope="module")
def sweep(local_ray, tmp_path_factory):
    directory = tmp_path_factory.mktemp("sweep")
    overrides = [
        *isolated(directory),
        SWEEP,
        f"train.params.epochs={EPOCHS}",
        "train.params.hidden=32",
        "train.params.batch_size=32",
        "train.scaling.num_workers=1",
    ]
    state = execute(prepare("configs/digits_sweep.yaml", overrides), on_event=lambda record: None)
    store = RunStore(Storage(str(directory / "rto-runs")))
    return {
        "store": store,
        "state": state,
        "events": store.events(state.run_id),
        "client": MlflowClient(f"sqlite:///{directory / 'mlflow.db'}"),
    }


def test_the_sweep_picks_the_best_trial_and_registers_its_model(sweep):
    state = sweep["state"]
    assert state.status is Status.SUCCEEDED
    table = trial_table(sweep)
    best = [t for t in table if t["best"]]
    assert len(table) == len(LRS) and len(best) == 1
    assert best[0]["params"]["lr"] == 0.1 and best[0]["status"] == "finished"
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
    stopped = [t for t in trial_table(sweep) if t["status"] == "stopped"]
    assert sorted(t["params"]["lr"] for t in stopped) == [0.0003, 0.0005] and all(t["epochs"] < EPOCHS for t in stopped)
    finished = [t for t in trial_table(sweep) if t["status"] == "finished"]
    assert all(t["epochs"] == EPOCHS for t in finished)
    ended = {(e["event"], e["trial"]) for e in sweep["events"] if e["event"] in ("trial_finished", "trial_stopped")}
    assert ended == {("trial_finished", t["trial"]) for t in finished} | {
        ("trial_stopped", t["trial"]) for t in stopped
    }
    runs = {r.data.tags["rto.trial"]: r for r in trial_runs(sweep)}
    for t in stopped:
        run = runs[t["trial"]]
        assert run.info.status == "FINISHED" and run.data.tags["rto.stopped_early"] == "true"
        assert len(sweep["client"].get_metric_history(run.info.run_id, "val_accuracy")) < EPOCHS


def test_mlflow_holds_pipeline_then_sweep_thentrial_runs(sweep):
    state, client = sweep["state"], sweep["client"]
    pipeline_run = client.get_run(state.mlflow["run_id"])
    assert pipeline_run.info.status == "FINISHED"
    (step,) = client.search_runs(
        [state.mlflow["experiment_id"]],
        f"tags.`rto.run_id` = '{state.run_id}' AND tags.`rto.step` = 'train' AND tags.`rto.kind` = 'train'",
    )
    assert step.info.status == "FINISHED" and step.data.tags["mlflow.parentRunId"] == state.mlflow["run_id"]
    trials = trial_runs(sweep)
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {step.info.run_id}
    assert {float(r.data.params["lr"]) for r in trials} == set(LRS)
    assert all(r.info.status == "FINISHED" for r in trials)  # none left RUNNING
    best = [r for r in trials if r.data.tags.get("rto.best") == "true"]
    assert len(best) == 1 and best[0].data.tags["rto.trial"] == next(
        t["trial"] for t in trial_table(sweep) if t["best"]
    )
    assert step.data.tags["rto.best_trial"] == best[0].data.tags["rto.trial"]
    history = client.get_metric_history(best[0].info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == list(range(EPOCHS))  # per epoch, the epoch as MLflow step


def test_rto_status_shows_the_trial_table(sweep, capsys):
    state = sweep["state"]
    assert main(["status", state.run_id, "--storage", sweep["store"].storage.root_uri]) == 0
    shown = capsys.readouterr().out
    assert f"train      sweep: {len(LRS)} trials" in shown
    best = next(t for t in trial_table(sweep) if t["best"])
    row = next(line.split() for line in shown.splitlines() if line.split()[:1] == ["*"])
    assert row[1] == best["trial"].rsplit("_", 1)[-1] and row[2] == "finished" and f"lr={best['params']['lr']}" in row
