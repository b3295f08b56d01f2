"""MLflow pieces on a real MLflow store (sqlite), without Ray: the champion alias, the
reconciliation of runs whose driver died, and the driver's store in a process of its own."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys

import pytest

from raytrain_orch.cli.wiring import end_mlflow_runs
from raytrain_orch.engine.reconcile import reconcile
from raytrain_orch.store.state import RunState, RunStore, Status, StepState
from raytrain_orch.store.storage import Storage
from raytrain_orch.tracking.champion import ChampionRule
from raytrain_orch.tracking.store_process import StoreCallError, StoreProcess, serve
from raytrain_orch.tracking.tracker import KILLED, Tracker, transient

pytestmark = pytest.mark.integration


@pytest.fixture
def tracker(tmp_path):
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _version(tracker: Tracker, name: str) -> str:
    """A new version of registered model ``name`` (its files do not matter here)."""
    client = tracker.client
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    return client.create_model_version(
        name, source=tracker.tracking_uri.replace("sqlite:///", "file://").rsplit("/", 1)[0]
    ).version


@pytest.mark.parametrize(("mode", "values", "holder"), [("max", [0.90, 0.95, 0.93], 2), ("min", [0.30, 0.20, 0.25], 2)])
def test_the_alias_moves_only_to_a_version_that_beats_its_holder(tracker, mode, values, holder):
    rule = ChampionRule("champion", "score", mode)
    moved = []
    for value in values:
        version = _version(tracker, "m")
        moved.append(tracker.promote("m", version, {"score": value}, rule))

    assert moved == [True, True, False]
    champion = tracker.client.get_model_version_by_alias("m", "champion")
    assert str(champion.version) == str(holder) and float(champion.tags["rto.score"]) == values[holder - 1]


def test_a_champion_rule_on_a_metric_the_model_lacks_is_a_clear_error(tracker):
    from raytrain_orch.core.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"mlflow.champion.metric 'test_accuracy' is not among the model's metrics \['loss'\]"
    ):
        tracker.promote("m", _version(tracker, "m"), {"loss": 0.1}, ChampionRule("champion", "test_accuracy"))


def test_a_run_whose_driver_died_ends_killed_with_its_open_mlflow_runs(tracker, tmp_path):
    experiment = tracker.experiment_id("e")
    parent = tracker.start_run(experiment, "r1", {"rto.run_id": "r1"})
    done = tracker.start_run(experiment, "prepare", {"rto.run_id": "r1"}, parent_id=parent)
    tracker.end_run(done, "FINISHED")
    train = tracker.start_run(experiment, "train", {"rto.run_id": "r1"}, parent_id=parent)
    other = tracker.start_run(experiment, "r2", {"rto.run_id": "r2"})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a driver that is gone
    store = RunStore(Storage(str(tmp_path / "rto-runs")))
    state = RunState(
        run_id="r1",
        name="x",
        pipeline="x",
        config_hash="h",
        status=Status.RUNNING,
        driver={"host": __import__("socket").gethostname(), "pid": dead.pid},
        mlflow={"tracking_uri": tracker.tracking_uri, "experiment_id": experiment, "run_id": parent},
        steps={
            "prepare": StepState(status=Status.SUCCEEDED),
            "train": StepState(status=Status.RUNNING, attempts=1, mlflow_run_id=train),
        },
    )
    store.save(state)

    ended = reconcile(store, [store.load("r1")], end_tracking=end_mlflow_runs)

    assert [s.run_id for s in ended] == ["r1"]
    again = store.load("r1")
    assert again.status is Status.KILLED and again.shown_status == "KILLED"
    assert {n: s.status for n, s in again.steps.items()} == {"prepare": Status.SUCCEEDED, "train": Status.KILLED}
    assert "rto resume r1" in again.error
    status = {run_id: tracker.run_status(run_id) for run_id in (parent, done, train, other)}
    assert status == {parent: KILLED, done: "FINISHED", train: KILLED, other: "RUNNING"}
    assert store.events("r1")[-1]["event"] == "run_reconciled"
    assert reconcile(store, [store.load("r1")], end_tracking=end_mlflow_runs) == []  # once


def test_a_live_driver_is_left_alone(tracker, tmp_path):
    store = RunStore(Storage(str(tmp_path / "rto-runs")))
    state = RunState(
        run_id="r1", name="x", pipeline="x", config_hash="h", status=Status.RUNNING
    )  # this process drives it
    store.save(state)

    assert reconcile(store, [store.load("r1")], end_tracking=end_mlflow_runs) == []
    assert store.load("r1").status is Status.RUNNING


def test_a_resume_ends_the_dead_drivers_trials_killed_and_gives_a_trial_its_params_back(tracker):
    """A driver killed between creating a trial's run and logging its params: the resume's
    cleanup logs them from the run's events, and leaves a described trial's as they were."""
    experiment = tracker.experiment_id("e")
    parent = tracker.start_run(experiment, "r1", {"rto.run_id": "r1"})
    trial = {"rto.run_id": "r1", "rto.kind": "trial", "rto.attempt": "1"}
    bare = tracker.start_run(experiment, "t_00002", {**trial, "rto.trial": "t_00002"}, parent_id=parent)
    described = tracker.start_run(experiment, "t_00001", {**trial, "rto.trial": "t_00001"}, parent_id=parent)
    tracker.log_params(described, {"lr": 0.1})
    from_events = {("1", "t_00002"): {"lr": 0.05}, ("1", "t_00001"): {"lr": 0.7}}

    ended = tracker.end_open_runs(experiment, "r1", KILLED, keep=parent, params=from_events)

    assert sorted(ended) == ["t_00001", "t_00002"]
    runs = {r: tracker.client.get_run(r) for r in (bare, described)}
    assert {r: (run.info.status, run.data.params) for r, run in runs.items()} == {
        bare: (KILLED, {"lr": "0.05"}),
        described: (KILLED, {"lr": "0.1"}),
    }
    assert tracker.run_status(parent) == "RUNNING"


def test_the_store_in_a_process_of_its_own_answers_as_the_store_and_judges_its_errors_there(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # as the outbox sets it: it retries itself
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = StoreProcess.connect(uri)
    try:
        experiment = store.experiment_id("apart")
        run = store.start_run(experiment, "step", {"rto.step": "step"})
        store.log_metrics(run, {"loss": 0.5})
        store.end_run(run, "FINISHED")
        with pytest.raises(StoreCallError, match="MlflowException: Run with id=nope not found") as refused:
            store.end_run("nope", "FINISHED")
    finally:
        store.close()  # type: ignore[attr-defined]

    logged = Tracker(uri).client.get_run(run)
    assert logged.info.status == "FINISHED" and logged.data.metrics == {"loss": 0.5}
    assert not transient(refused.value)  # the request refused: retrying cannot help
    unreachable = StoreProcess.connect("http://127.0.0.1:1")
    try:
        with pytest.raises(StoreCallError) as down:
            unreachable.end_run("any", "FINISHED")
    finally:
        unreachable.close()  # type: ignore[attr-defined]
    assert transient(down.value)  # the store out of reach: retried


def test_the_store_s_process_ends_quietly_when_the_driver_closed_it_before_an_answer(tmp_path):
    class Closed(io.RawIOBase):  # the driver's end of the pipe, closed by a run that ended early
        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    calls = pickle.dumps(("experiment_id", ("early",), {})) + pickle.dumps(("experiment_id", ("later",), {}))
    read = io.BytesIO(calls)

    serve(f"sqlite:///{tmp_path / 'mlflow.db'}", read, Closed())  # returns: no traceback on the driver's stderr

    assert 0 < read.tell() < len(calls)  # it answered nothing more after the pipe closed
