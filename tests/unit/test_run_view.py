"""The one reducer of a run's events (``core.run_view.RunView``): what it keeps of each step and
sweep, read back by ``rto status`` and ``rto runs`` from ``events.jsonl``."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

from raytrain_orch.cli.runs import _sweeps
from raytrain_orch.core.run_view import RunView

STARTED = {"event": "step_started", "step": "train", "kind": "train", "gang": "g", "total_epochs": 4}


def epoch(attempt: int, number: int, ts: float = 0.0, **more) -> dict:
    return {
        "event": "epoch",
        "step": "train",
        "attempt": attempt,
        "epoch": number,
        "metrics": {"loss": 1.0},
        "ts": ts,
        **more,
    }


def test_a_step_shows_its_latest_attempts_progress_and_every_hang():
    view = RunView.of(
        [
            {**STARTED, "attempt": 1, "max_attempts": 3, "ts": 1.0},
            epoch(1, 0),
            epoch(1, 1),
            {"event": "step_hung", "step": "train", "attempt": 1, "reason": "no progress", "stacks": "rto logs"},
            {"event": "step_retrying", "step": "train", "attempt": 1, "error": "StepHung: x\nmore", "delay_s": 1.0},
            {**STARTED, "attempt": 2, "max_attempts": 3, "ts": 5.0},
            {"event": "restored", "step": "train", "attempt": 2, "epoch": 0, "checkpoint": "c"},
            epoch(1, 3, ts=6.0),  # late, from the attempt that ended: no part of the view
            {
                "event": "workers_resized",
                "step": "train",
                "attempt": 2,
                "world_size": 1,
                "previous": None,
                "min_workers": 1,
                "max_workers": 2,
                "ts": 7.0,
            },
        ]
    )

    train = view.step("train")
    assert (train.state, train.attempt, train.max_attempts, train.total_epochs) == ("running", 2, 3, 4)
    assert train.epochs == 1 and train.reported is None  # restored to epoch 1; none reported since
    assert train.detail == "resumed after epoch 1"
    assert train.workers == {"world_size": 1, "min_workers": 1, "max_workers": 2}
    assert train.hung == [{"attempt": 1, "reason": "no progress", "stacks": "rto logs"}]
    assert (train.last_event, train.last_event_at) == ("workers_resized", 7.0)


def test_a_fixed_size_group_shows_no_workers_and_a_failure_its_first_line():
    view = RunView.of(
        [
            {**STARTED, "attempt": 1, "ts": 1.0},
            {
                "event": "workers_resized",
                "step": "train",
                "attempt": 1,
                "world_size": 2,
                "previous": None,
                "min_workers": 2,
                "max_workers": 2,
            },
            epoch(1, 0),
            {"event": "step_failed", "step": "train", "attempt": 1, "error": "ValueError: bad\ntrace", "ts": 4.0},
        ]
    )

    train = view.step("train")
    assert train.workers is None and train.reported == 1
    assert (train.state, train.detail, train.duration_s) == ("failed", "ValueError: bad", 3.0)


def test_the_driver_notes_kept_are_the_latest_five():
    view = RunView.of([{"event": "tracking_dropped", "operation": str(n)} for n in range(7)])

    assert [note["operation"] for note in view.notes] == ["2", "3", "4", "5", "6"]


def sweep(attempt: int, *events: dict) -> list[dict]:
    where = {"step": "train", "attempt": attempt}
    return [{**where, **event} for event in events]


def test_a_sweeps_trials_are_those_of_its_latest_attempt():
    events = [
        *sweep(
            1,
            {"event": "trial_started", "trial": "t_00000", "params": {"lr": 0.1}},
            {"event": "trial_finished", "trial": "t_00000", "metrics": {"acc": 0.9}},
        ),
        *sweep(
            2,
            {"event": "trial_started", "trial": "t_00001", "params": {"lr": 0.2}},
            {"event": "trial_started", "trial": "t_00002", "params": {"lr": 0.3}},
            {"event": "trial_stopped", "trial": "t_00002", "epochs": 1},
            {"event": "trial_failed", "trial": "t_00002", "error": "stopped"},
        ),  # a stop outranks it
    ]

    trials = RunView.of(events).step("train").trials
    assert {name: t.status for name, t in trials.items()} == {"t_00001": "running", "t_00002": "stopped"}
    shown = io.StringIO()
    with redirect_stdout(shown):
        _sweeps(RunView.of(events))
    assert shown.getvalue() == "train: sweep running: 2 trial(s) started, 0 finished, 1 stopped early\n"


def test_a_finished_sweep_shows_its_table_as_the_sweep_reported_it():
    rows = [{"trial": "t_00000", "status": "finished", "epochs": 4, "acc": 0.95, "params": {"lr": 0.1}, "best": True}]
    events = sweep(
        1,
        {"event": "trial_started", "trial": "t_00000", "params": {"lr": 0.1}},
        {"event": "sweep_finished", "metric": "acc", "trials": rows},
    )

    train = RunView.of(events).step("train")
    assert train.sweep_table == rows and train.trials["t_00000"].best
    shown = io.StringIO()
    with redirect_stdout(shown):
        _sweeps(RunView.of(events))
    assert shown.getvalue().splitlines()[0] == "train      sweep: 1 trials"
    assert shown.getvalue().splitlines()[2].split() == ["*", "00000", "finished", "4", "0.9500", "lr=0.1"]
