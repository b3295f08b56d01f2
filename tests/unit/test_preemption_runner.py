"""A preempted attempt, as the runner and the workers' stop protocol see it: no Ray.

The runner treats ``StepPreempted`` as no failure: the step runs again at once (it waits in the
admission queue), no retry is spent, and its record and view say who preempted it and from which
epoch it resumes. The progress channel's stop protocol makes every rank stop at one report.
"""

from __future__ import annotations

from raytrain_orch.core.errors import StepPreempted
from raytrain_orch.core.plan import build_plan
from raytrain_orch.core.run_view import RunView
from raytrain_orch.engine.runner import Runner
from raytrain_orch.ray.channel import _ProgressChannel
from raytrain_orch.store.state import Status
from tests.fakes import InfraFault
from tests.pipelines.diamond import pipeline
from tests.unit.test_runner import Run, config

BY = {"by": "urgent-run/train", "priority": 10, "queue": "default", "keep": 0}


def preempted(epoch: int) -> StepPreempted:
    return StepPreempted("left: preempted", BY, epoch)


def test_a_preempted_attempt_runs_again_without_spending_a_retry(tmp_path):
    run = Run(tmp_path, {"left": [preempted(3), preempted(5), InfraFault("worker died"), None]})
    run.config = config(tmp_path, left={"retries": {"max": 1, "backoff_s": 0.01}})
    run.plan = build_plan(run.config, pipeline)
    run.runner = Runner(run.config, pipeline, run.plan, run.backend, run.store, on_event=run.records.append)

    state = run()

    left = state.steps["left"]
    assert state.status is Status.SUCCEEDED  # two preemptions and one fault, within retries.max = 1
    assert (left.attempts, left.preemptions) == (4, 2)
    assert [e["epoch"] for e in run.events("step_preempted")] == [3, 5]
    assert [e["attempt"] for e in run.events("step_retrying")] == [3]  # only the fault was a retry


def test_the_view_says_who_preempted_a_step_and_from_which_epoch_it_resumes(tmp_path):
    run = Run(tmp_path, {"left": [preempted(3), None]})
    run()
    view = RunView()
    shown = []
    for record in run.records:
        view.consume(record)
        if record["event"] == "step_preempted":
            shown.append(view.step("left").detail)
    assert shown == ["preempted by urgent-run/train (priority 10, queue default); waiting to resume from epoch 3"]
    assert view.step("left").preemptions == 1 and view.step("left").state == "done"


def test_every_rank_stops_at_one_report_none_of_them_has_passed():
    channel = _ProgressChannel()
    # Two ranks; rank 0 has asked about report 4, rank 1 only about report 3.
    for report in range(4):
        assert channel.stopping("train/1", report) is None
    assert channel.stopping("train/1", 4) is None

    stop_at = channel.request_stop("train/1")

    assert stop_at == 6  # each rank learns of it one report after asking
    # Rank 1 asks at report 4 (answered at its report 5: not yet), then 5 (answered at 6: stop).
    assert channel.stopping("train/1", 4) == 6 and 5 < stop_at
    assert channel.stopping("train/1", 5) == 6
    assert channel.request_stop("train/1") == 6  # asked again: the same report
    assert channel.outcome("train/1") is None
    channel.stopped("train/1", 6)
    assert channel.outcome("train/1") == {"epoch": 6}
    assert channel.stopping("train/2", 0) is None  # another attempt is not asked to stop


def test_a_preempted_step_waiting_to_resume_says_who_preempted_it_once():
    view = RunView()
    sentence = "preempted by urgent-run/train (priority 10, queue default); waiting to resume from epoch 3"
    view.consume({"event": "step_preempted", "step": "train", "attempt": 1, **BY, "epoch": 3, "ts": 1.0})
    view.consume({"event": "step_started", "step": "train", "attempt": 2, "ts": 2.0})
    reason = f"{sentence}; waiting for resources: 2 × {{GPU: 1}} PACK; held by urgent-run/train"
    view.consume({"event": "step_waiting", "step": "train", "attempt": 2, "reason": reason, "position": 1, "ts": 3.0})

    assert view.step("train").detail == f"{reason} · queue position 1"
    assert view.step("train").detail.count("preempted by") == 1
