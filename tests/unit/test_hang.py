"""Hang detection: the watch's limits (pure); the guard, on a fake clock, ending an attempt past
its limit; and the runner retrying it, through the fake backend (no Ray: the attempt is a thread
that blocks). Time is the tests' own: nothing here waits for it to pass."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest
import yaml

from raytrain_orch.core import constants
from raytrain_orch.core.config import parse_config
from raytrain_orch.core.hang import Watch
from raytrain_orch.core.plan import HangLimit, build_plan
from raytrain_orch.core.step_config import HangConfig
from raytrain_orch.engine.hangs import HangGuard
from raytrain_orch.engine.runner import Runner
from raytrain_orch.store import steplogs
from raytrain_orch.store.state import RunState, RunStore, Status, StepState
from raytrain_orch.store.storage import Storage
from tests.fakes import FakeBackend, block_until_ended
from tests.pipelines.diamond import pipeline

POLICY = HangConfig(multiple=4, floor_s=10, startup_s=100)


def watch(timeout_s: float | None = None) -> Watch:
    return Watch("train", 1, HangLimit(timeout_s, POLICY), last=0.0)


def test_before_any_progress_the_startup_limit_applies():
    w = watch()
    assert w.limit_s() == 100
    assert w.overdue(99) is None and w.overdue(101) == 101


def test_a_set_timeout_counts_from_when_the_steps_code_starts():
    w = watch(timeout_s=3)
    assert w.limit_s() == 100  # a worker still starting (importing) is no hang
    w.code_started(40)
    assert w.limit_s() == 3 and w.overdue(42) is None and w.overdue(44) == 4
    w.restarted(50)
    assert w.limit_s() == 100


def test_the_limit_is_a_multiple_of_the_median_epoch_with_a_floor():
    w = watch()
    w.progress(50)  # the first epoch's end: the startup is over, no interval sampled from it
    for t in (56, 62, 68, 100):  # epochs of 6, 6, 6 s, then one slow 32 s epoch
        w.progress(t)
    assert w.limit_s() == 24  # 4 × the median 6 s: the one slow epoch does not move it
    assert w.overdue(100 + 23) is None and w.overdue(100 + 25) == 25

    fast = watch()
    fast.progress(1)
    fast.progress(1.5)
    assert fast.limit_s() == 10  # 4 × 0.5 s is under the floor


def test_a_restart_is_a_start_and_a_mid_epoch_metric_is_no_epoch():
    w = watch()
    w.progress(5)
    w.progress(10)
    w.alive(12)  # a metric logged mid-epoch: the clock restarts, nothing sampled
    assert list(w.samples) == [5] and w.last == 12
    w.restarted(20)
    assert w.limit_s() == 100  # the restarted workers get the startup limit again
    w.progress(21)  # the first progress after the restart: no interval sampled from it
    assert list(w.samples) == [5] and w.limit_s() == 20


def test_a_set_timeout_is_the_limit_whatever_the_pace():
    w = watch(timeout_s=3)
    w.code_started(0)
    w.progress(1)
    w.progress(101)  # a 100 s epoch
    assert w.limit_s() == 3 and w.overdue(104.5) == pytest.approx(3.5)


# --- the guard: a fake clock, a fake backend ---------------------------------------------------


class Clock:
    """Time as the test says: ``tick`` seconds pass at each reading (none unless set)."""

    def __init__(self, now: float = 1000.0, tick: float = 0.0):
        self.now, self.tick = now, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


class Ender:
    """What the guard asks of the backend, recorded: two processes' stacks kept, attempts ended."""

    def __init__(self) -> None:
        self.ended: list[tuple[str, int]] = []

    def keep_stacks(self, step: str, attempt: int) -> int:
        return 2

    def end_attempt(self, step: str, attempt: int) -> None:
        self.ended.append((step, attempt))


def config(tmp_path: Path, hang: dict | None = None, **left: object):
    raw = {
        "name": "diamond",
        "pipeline": "tests.pipelines.diamond:pipeline",
        "storage": str(tmp_path / "runs"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "hang": hang or {},
        "steps": {"left": {"retries": {"max": 1, "backoff_s": 0}, **left}},
    }
    return parse_config(yaml.safe_dump(raw), "diamond.yaml")


class Guarded:
    """Step ``left``'s first attempt, running under a hang guard whose clock the test moves."""

    def __init__(self, tmp_path: Path, hang: dict | None = None, **left: object):
        plan = build_plan(config(tmp_path, hang, **left), pipeline)
        self.clock, self.backend, self.notes = Clock(), Ender(), queue.SimpleQueue()
        self.guard = HangGuard(self.backend, self.notes, clock=self.clock)
        self.state = RunState(run_id="r1", name="diamond", pipeline="diamond", config_hash="h")
        self.state.steps["left"] = StepState(kind="task", status=Status.RUNNING, attempts=1)
        self.guard.watch(plan.step("left"), 1)

    def after(self, seconds: float, event: str | None = None) -> None:
        """``seconds`` later, the attempt's ``event`` (if any) arrives and the guard checks."""
        self.clock.now += seconds
        if event is not None:
            self.guard.saw({"event": event, "step": "left", "attempt": 1})
        self.guard.check(self.state)

    def hung(self) -> dict:
        return self.notes.get(timeout=10)  # sent by the guard's thread, once the stacks are kept


def test_an_attempt_past_its_limit_is_ended_with_its_stacks_kept(tmp_path):
    guarded = Guarded(tmp_path, hang_timeout_s=0.5)
    guarded.after(0, "step_process")  # the step's code starts: the set timeout counts from here

    guarded.after(0.4)
    assert guarded.notes.empty()
    guarded.after(0.2)

    hung = guarded.hung()
    assert hung["event"] == "step_hung" and (hung["step"], hung["attempt"]) == ("left", 1)
    assert hung["idle_s"] == 0.6 and hung["limit_s"] == 0.5 and hung["detected_ts"] == guarded.clock.now
    assert hung["stacks"] == "rto logs r1 --step left --attempt 1" and hung["processes"] == 2
    assert guarded.backend.ended == [("left", 1)]
    failure = guarded.guard.settled("left", 1)
    assert failure is not None and failure.kind == "infra" and failure.summary().startswith("StepHung: no progress")


def test_a_slow_step_that_heartbeats_is_never_hung(tmp_path):
    guarded = Guarded(tmp_path, hang_timeout_s=0.4)
    guarded.after(0, "step_process")

    for _ in range(12):  # 1.2 s in all, three times its limit
        guarded.after(0.1, "heartbeat")

    assert guarded.notes.empty() and guarded.backend.ended == []


def test_the_usage_samplers_records_are_no_sign_of_life(tmp_path):
    guarded = Guarded(tmp_path, hang_timeout_s=0.5)
    guarded.after(0, "step_process")

    for _ in range(2):  # its sampler goes on sending while its code is stuck
        guarded.after(0.3, "usage")

    assert guarded.hung()["idle_s"] == 0.6 and guarded.backend.ended == [("left", 1)]


def test_detection_turned_off_lets_a_step_take_its_time(tmp_path):
    guarded = Guarded(tmp_path, hang_timeout_s=0.2, hang_detection=False)
    guarded.after(0, "step_process")

    guarded.after(3600)

    assert guarded.notes.empty() and guarded.backend.ended == []


def test_without_a_timeout_the_limit_follows_the_steps_own_pace(tmp_path):
    guarded = Guarded(tmp_path, hang={"multiple": 3, "floor_s": 0.3, "startup_s": 60})
    for _ in range(6):
        guarded.after(0.05, "heartbeat")

    guarded.after(0.29)
    assert guarded.notes.empty()
    guarded.after(0.02)

    hung = guarded.hung()
    assert hung["limit_s"] == 0.3  # 3 × 0.05 s is under the floor
    assert "floor 0.3 s" in hung["reason"]


# --- the runner: the guard's verdict acted on ---------------------------------------------------


def test_a_hung_attempt_is_ended_with_its_stacks_kept_and_retried(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "POLL_INTERVAL_S", 0.01)
    clock = Clock()

    def hangs(ctx):
        clock.tick = 1.0  # while it blocks, each look at the clock finds a second gone
        block_until_ended(ctx)
        clock.tick = 0.0

    cfg = config(tmp_path, hang_timeout_s=0.5)
    store, backend, records = RunStore(Storage(cfg.storage)), FakeBackend({"left": [hangs]}), []
    runner = Runner(cfg, pipeline, build_plan(cfg, pipeline), backend, store, on_event=records.append, clock=clock)

    state = runner.run("r1")

    assert state.status is Status.SUCCEEDED
    assert state.steps["left"].attempts == 2 and backend.ended == [("left", 1)]
    hung = next(r for r in records if r["event"] == "step_hung")
    assert hung["attempt"] == 1 and hung["limit_s"] == 0.5 and hung["processes"] == 1 and hung["idle_s"] > 0.5
    assert hung["stacks"] == "rto logs r1 --step left --attempt 1"
    retry = next(r for r in records if r["event"] == "step_retrying")
    assert retry["kind"] == "infra" and retry["error"].startswith("StepHung: no progress for")
    assert [r["event"] for r in records].index("step_hung") < [r["event"] for r in records].index("step_retrying")

    (logs,) = steplogs.select(store, store.load("r1"), "left", attempt=1)
    (stack_log,) = [f for f in logs.files if f.stacks]
    text = steplogs.read(store.storage, stack_log).decode()
    assert "in hangs" in text and "block_until_ended(ctx)" in text  # the blocking line of the step


def test_the_pace_is_the_recent_one_and_a_long_run_keeps_a_bounded_window():
    w = watch()
    w.progress(0)
    for i in range(1, 1001):
        w.progress(i * 2.0 if i <= 500 else 1000 + (i - 500) * 6.0)  # 2 s epochs, then 6 s ones
    assert len(w.samples) == 101
    assert w.limit_s() == 24  # 4 × the recent 6 s
