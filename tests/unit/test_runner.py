"""The runner's logic, driven through a fake backend: no Ray, no MLflow, in milliseconds.

Each test runs the diamond pipeline (source → left, right → join) on real local storage and
asserts what a user reads back: the run's record, its events, and which attempts ran.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml

from raytrain_orch.core.config import parse_config
from raytrain_orch.core.errors import PipelineFailedError
from raytrain_orch.core.plan import build_plan
from raytrain_orch.engine.runner import Runner
from raytrain_orch.store.state import RunState, RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.counting_fs import count_writes
from tests.fakes import FakeBackend, InfraFault, Outcome
from tests.pipelines.diamond import pipeline

RETRIES = {"retries": {"max": 2, "backoff_s": 0.01}}


def config(tmp_path: Path, **steps: dict):
    raw = {
        "name": "diamond",
        "pipeline": "tests.pipelines.diamond:pipeline",
        "storage": str(tmp_path / "runs"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},  # never opened: the runner has no tracking
        "steps": {name: steps.get(name, RETRIES) for name in ("source", "left", "right", "join")},
    }
    return parse_config(yaml.safe_dump(raw), "diamond.yaml")


class Run:
    """One pipeline run through the runner, and what it left behind."""

    def __init__(self, tmp_path: Path, script: dict[str, list[Outcome]] | None = None, **runner_options):
        self.config = config(tmp_path)
        self.plan = build_plan(self.config, pipeline)
        self.store = RunStore(Storage(self.config.storage))
        self.backend = FakeBackend(script)
        self.records: list[dict] = []
        self.runner = Runner(
            self.config, pipeline, self.plan, self.backend, self.store, on_event=self.records.append, **runner_options
        )

    def __call__(self, run_id: str = "r1", resume: RunState | None = None) -> RunState:
        try:
            return self.runner.run(run_id, resume=resume)
        except PipelineFailedError:
            return self.store.load(run_id)

    def events(self, name: str) -> list[dict]:
        return [r for r in self.records if r["event"] == name]


def statuses(state: RunState) -> dict[str, Status]:
    return {name: s.status for name, s in state.steps.items()}


def test_steps_run_in_dependency_order_and_independent_ones_at_once(tmp_path):
    both = threading.Barrier(2, timeout=5)  # left and right must be running together to pass it
    run = Run(tmp_path, {"left": [lambda ctx: both.wait()], "right": [lambda ctx: both.wait()]})

    state = run()

    assert state.status is Status.SUCCEEDED
    assert state.steps["join"].metrics == {"value": 12.0}  # (1 + 1) + (1 × 10): each input reached it
    order = [name for name, _ in run.backend.calls]
    assert order[0] == "source" and order[-1] == "join" and sorted(order[1:3]) == ["left", "right"]
    started = [e["step"] for e in run.events("step_started")]
    assert started.index("join") == 3  # only after both of its inputs


def test_an_unchanged_second_run_is_all_cache_hits(tmp_path):
    Run(tmp_path)("r1")
    again = Run(tmp_path)

    state = again("r2")

    assert statuses(state) == dict.fromkeys(("source", "left", "right", "join"), Status.CACHED)
    assert again.backend.calls == []
    assert state.steps["join"].metrics == {"value": 12.0}


def test_rerun_recomputes_the_step_and_what_depends_on_it_only(tmp_path):
    Run(tmp_path)("r1")
    again = Run(tmp_path, rerun=["left"])

    state = again("r2")

    assert sorted(again.backend.calls) == [("join", 1), ("left", 1)]
    assert statuses(state) == {
        "source": Status.CACHED,
        "left": Status.SUCCEEDED,
        "right": Status.CACHED,
        "join": Status.SUCCEEDED,
    }


def test_no_cache_recomputes_every_step(tmp_path):
    Run(tmp_path)("r1")
    again = Run(tmp_path, use_cache=False)

    state = again("r2")

    assert sorted(name for name, _ in again.backend.calls) == ["join", "left", "right", "source"]
    assert set(statuses(state).values()) == {Status.SUCCEEDED}


def test_a_user_error_fails_at_once_and_blocks_what_depends_on_it(tmp_path):
    run = Run(tmp_path, {"right": [ValueError("bad column")]})

    state = run()

    assert state.status is Status.FAILED
    assert statuses(state) == {
        "source": Status.SUCCEEDED,
        "left": Status.SUCCEEDED,
        "right": Status.FAILED,
        "join": Status.SKIPPED,
    }
    assert state.steps["right"].attempts == 1 and state.steps["right"].error == "ValueError: bad column"
    (failed,) = run.events("step_failed")
    assert failed["kind"] == "user" and "step's own code" in failed["reason"]
    assert [e["step"] for e in run.events("step_skipped")] == ["join"]


def test_an_infrastructure_fault_is_retried_with_backoff_up_to_the_budget(tmp_path):
    run = Run(tmp_path, {"left": [InfraFault("worker died")] * 3})

    state = run()

    assert [a for step, a in run.backend.calls if step == "left"] == [1, 2, 3]  # the first try and retries.max = 2
    assert state.steps["left"].status is Status.FAILED and state.steps["left"].attempts == 3
    delays = [e["delay_s"] for e in run.events("step_retrying")]
    assert len(delays) == 2 and delays[1] > delays[0]  # doubling, with jitter
    assert "no retries left (2 allowed)" in run.events("step_failed")[0]["reason"]


def test_a_fault_that_goes_away_on_retry_costs_only_the_attempt(tmp_path):
    run = Run(tmp_path, {"left": [InfraFault("worker died"), None]})

    state = run()

    assert state.status is Status.SUCCEEDED and state.steps["left"].attempts == 2
    assert state.steps["join"].metrics == {"value": 12.0}


def test_a_step_error_listed_in_retries_on_is_retried_like_a_fault(tmp_path):
    run = Run(tmp_path, {"left": [ConnectionError("reset"), ConnectionError("reset"), None]})
    retried = {"retries": {"max": 2, "backoff_s": 0.01, "on": ["ConnectionError"]}}
    run.config = config(tmp_path, left=retried)
    run.plan = build_plan(run.config, pipeline)
    run.runner = Runner(run.config, pipeline, run.plan, run.backend, run.store, on_event=run.records.append)

    state = run()

    assert state.status is Status.SUCCEEDED and state.steps["left"].attempts == 3
    assert [e["kind"] for e in run.events("step_retrying")] == ["user", "user"]


def test_resume_keeps_finished_steps_and_runs_the_rest(tmp_path):
    failed = Run(tmp_path, {"right": [ValueError("bad column")]})("r1")
    assert failed.status is Status.FAILED
    resumed = Run(tmp_path)

    state = resumed("r1", resume=failed)

    assert state.status is Status.SUCCEEDED and state.run_id == "r1"
    assert sorted(resumed.backend.calls) == [("join", 1), ("right", 2)]  # source and left kept; right's attempts go on
    assert [e["kept"] for e in resumed.events("run_resumed")] == [["source", "left"]]


def test_an_interrupt_ends_the_active_step_and_the_run_killed(tmp_path):
    release = threading.Event()
    run = Run(tmp_path, {"join": [lambda ctx: release.wait(10)]})

    def interrupt_when_join_starts(record: dict) -> None:
        run.records.append(record)
        if record["event"] == "step_started" and record["step"] == "join":
            raise KeyboardInterrupt  # Ctrl-C in the driver thread

    run.runner.on_event = interrupt_when_join_starts
    with pytest.raises(KeyboardInterrupt):
        run()
    release.set()

    state = run.store.load("r1")
    assert state.status is Status.KILLED and state.error == "interrupted (Ctrl-C)"
    assert statuses(state) == {
        "source": Status.SUCCEEDED,
        "left": Status.SUCCEEDED,
        "right": Status.SUCCEEDED,
        "join": Status.KILLED,
    }
    assert run.events("run_finished")[0]["status"] == "KILLED"


def test_state_json_is_saved_on_state_changes_not_on_progress(tmp_path, monkeypatch):
    from tests.pipelines.long_run import pipeline as long_pipeline

    raw = {
        "name": "long",
        "pipeline": "tests.pipelines.long_run:pipeline",
        "storage": str(tmp_path / "runs"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "steps": {"train": {"params": {"epochs": 100, "epoch_s": 0}}},
    }
    config = parse_config(yaml.safe_dump(raw), "long.yaml")
    store = RunStore(Storage(config.storage))
    saved: list[str] = []
    save = RunStore.save
    monkeypatch.setattr(RunStore, "save", lambda self, state: saved.append(state.status.value) or save(self, state))
    runner = Runner(config, long_pipeline, build_plan(config, long_pipeline), FakeBackend(), store)

    runner.run("r1")

    events = [e["event"] for e in store.events("r1")]
    assert events.count("epoch") == 100
    assert events == ["run_started", "step_started", *["epoch"] * 100, "step_succeeded", "run_finished"]
    assert saved == ["RUNNING", "RUNNING", "RUNNING", "SUCCEEDED"]  # one save per state change, none per epoch


def test_a_trial_s_start_is_in_the_bucket_s_event_log_before_anyone_is_shown_it(tmp_path):
    # Its params name the MLflow run of a trial a killed driver opened: a resume reads them from the log.
    def trial(ctx):
        ctx.events.put({"event": "trial_started", "step": "left", "attempt": ctx.attempt, "trial": "t1", "params": {}})

    run = Run(tmp_path, {"left": [trial]})
    count_writes(run.store.storage)  # the storage root as an object store: events buffered, then segments
    reader = RunStore(Storage(run.config.storage))  # `rto status` in another process
    logged_when_shown: list[list[str]] = []
    run.runner.on_event = lambda r: (
        logged_when_shown.append([e["event"] for e in reader.events("r1")]) if r["event"] == "trial_started" else None
    )

    assert run().status is Status.SUCCEEDED
    (logged,) = logged_when_shown
    assert "trial_started" in logged
