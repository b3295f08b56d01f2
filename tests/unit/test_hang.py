"""Hang detection: the watch's limits (pure), and the runner ending a hung attempt and retrying
it, through the fake backend (no Ray: the attempt is a thread that blocks)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from raytrain_orch.core.config import parse_config
from raytrain_orch.core.errors import PipelineFailedError
from raytrain_orch.core.hang import Watch
from raytrain_orch.core.plan import HangLimit, build_plan
from raytrain_orch.core.step_config import HangConfig
from raytrain_orch.engine.runner import Runner
from raytrain_orch.store import steplogs
from raytrain_orch.store.state import RunStore, Status
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


# --- the runner --------------------------------------------------------------------------------


def run(tmp_path: Path, script: dict, hang: dict | None = None, **left: object):
    raw = {
        "name": "diamond",
        "pipeline": "tests.pipelines.diamond:pipeline",
        "storage": str(tmp_path / "runs"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "hang": hang or {},
        "steps": {"left": {"retries": {"max": 1, "backoff_s": 0.01}, **left}},
    }
    config = parse_config(yaml.safe_dump(raw), "diamond.yaml")
    store = RunStore(Storage(config.storage))
    backend = FakeBackend(script)
    records: list[dict] = []
    runner = Runner(config, pipeline, build_plan(config, pipeline), backend, store, on_event=records.append)
    try:
        state = runner.run("r1")
    except PipelineFailedError:
        state = store.load("r1")
    return state, records, backend, store


def test_a_hung_attempt_is_ended_with_its_stacks_kept_and_retried(tmp_path):
    began: list[float] = []

    def hangs(ctx):
        began.append(time.time())
        block_until_ended(ctx)

    state, records, backend, store = run(tmp_path, {"left": [hangs]}, hang_timeout_s=0.5)

    assert state.status is Status.SUCCEEDED
    assert state.steps["left"].attempts == 2 and backend.ended == [("left", 1)]
    hung = next(r for r in records if r["event"] == "step_hung")
    assert hung["attempt"] == 1 and hung["limit_s"] == 0.5 and hung["processes"] == 1
    assert 0.5 <= hung["detected_ts"] - began[0] < 2.0  # within the limit and one poll or so
    assert hung["stacks"] == "rto logs r1 --step left --attempt 1"
    retry = next(r for r in records if r["event"] == "step_retrying")
    assert retry["kind"] == "infra" and retry["error"].startswith("StepHung: no progress for")
    assert [r["event"] for r in records].index("step_hung") < [r["event"] for r in records].index("step_retrying")

    state_now = store.load("r1")
    (logs,) = steplogs.select(store, state_now, "left", attempt=1)
    (stack_log,) = [f for f in logs.files if f.stacks]
    text = steplogs.read(store.storage, stack_log).decode()
    assert "in hangs" in text and "block_until_ended(ctx)" in text  # the blocking line of the step


def test_a_slow_step_that_heartbeats_is_never_hung(tmp_path):
    def slow(ctx):
        for _ in range(12):  # 1.2 s in all, three times its limit
            time.sleep(0.1)
            ctx.heartbeat()

    state, records, backend, _ = run(tmp_path, {"left": [slow]}, hang_timeout_s=0.4)

    assert state.status is Status.SUCCEEDED and state.steps["left"].attempts == 1
    assert not [r for r in records if r["event"] == "step_hung"] and backend.ended == []


def test_detection_turned_off_lets_a_step_take_its_time(tmp_path):
    state, records, backend, _ = run(
        tmp_path, {"left": [lambda ctx: time.sleep(0.8)]}, hang_timeout_s=0.2, hang_detection=False
    )

    assert state.status is Status.SUCCEEDED and state.steps["left"].attempts == 1
    assert backend.ended == []


def test_without_a_timeout_the_limit_follows_the_steps_own_pace(tmp_path):
    def beats_then_stops(ctx):
        for _ in range(6):
            time.sleep(0.05)
            ctx.heartbeat()
        block_until_ended(ctx)

    from raytrain_orch import context

    context.HEARTBEAT_MIN_S, saved = 0.0, context.HEARTBEAT_MIN_S
    try:
        state, records, backend, _ = run(
            tmp_path,
            {"left": [beats_then_stops]},
            hang={"multiple": 3, "floor_s": 0.3, "startup_s": 60},
            retries={"max": 0},
        )
    finally:
        context.HEARTBEAT_MIN_S = saved

    hung = next(r for r in records if r["event"] == "step_hung")
    assert hung["limit_s"] == 0.3  # 3 × ~0.05 s is under the floor
    assert "floor 0.3 s" in hung["reason"]
    assert state.steps["left"].status is Status.FAILED and backend.ended == [("left", 1)]


def test_the_pace_is_the_recent_one_and_a_long_run_keeps_a_bounded_window():
    w = watch()
    w.progress(0)
    for i in range(1, 1001):
        w.progress(i * 2.0 if i <= 500 else 1000 + (i - 500) * 6.0)  # 2 s epochs, then 6 s ones
    assert len(w.samples) == 101
    assert w.limit_s() == 24  # 4 × the recent 6 s
