"""The plain progress lines of ``rto run`` for admission events."""

from __future__ import annotations

import io

from raytrain_orch.progress import LinePrinter


def lines(*records: dict) -> list[str]:
    stream = io.StringIO()
    printer = LinePrinter(stream)
    for record in records:
        printer({"ts": 0.0, "run_id": "r", **record})
    return [line.split("  ", 1)[1] for line in stream.getvalue().splitlines()]


def test_a_waiting_step_says_why_and_then_how_long_it_waited():
    shown = lines(
        {"event": "step_waiting", "step": "train", "attempt": 1, "position": 2, "reason": "waiting for resources: 2 × {CPU: 1} PACK; held by r2/train"},
        {"event": "step_admitted", "step": "train", "attempt": 1, "waited_s": 12.34},
    )

    assert shown == [
        "train      waiting for resources: 2 × {CPU: 1} PACK; held by r2/train (queue position 2)",
        "train      admitted after waiting 12.3 s",
    ]


def test_a_step_admitted_at_once_prints_nothing_extra():
    assert lines({"event": "step_admitted", "step": "prepare", "attempt": 1, "waited_s": 0.9}) == []


def test_sweep_trials_are_named_by_number_and_end_in_a_table_with_the_best_marked():
    stream = io.StringIO()
    printer = LinePrinter(stream)
    trial = {"step": "train", "attempt": 1, "trial": "train_a1b2c_00001"}
    for record in (
        {"event": "step_started", "step": "train", "attempt": 1, "gang": "2 × {CPU: 1} PACK", "total_epochs": 4},
        {"event": "trial_started", **trial, "params": {"lr": 0.012345, "hidden": 64}},
        {"event": "epoch", **trial, "epoch": 0, "metrics": {"epoch": 0.0, "val_accuracy": 0.5}},
        {"event": "trial_stopped", **trial, "epochs": 1},
        {"event": "sweep_finished", "step": "train", "attempt": 1, "metric": "val_accuracy", "trials": [
            {"trial": "train_a1b2c_00000", "status": "finished", "epochs": 4, "val_accuracy": 0.95, "params": {"lr": 0.1}, "best": True},
            {"trial": "train_a1b2c_00001", "status": "stopped", "epochs": 1, "val_accuracy": 0.5, "params": {"lr": 0.012345}, "best": False},
        ]},
    ):
        printer({"ts": 0.0, "run_id": "r", **record})
    shown = [line[10:] for line in stream.getvalue().splitlines()]

    assert shown[1:5] == [
        "train      trial 00001 started  lr=0.01235 hidden=64",
        "train      trial 00001 epoch 1/4  val_accuracy=0.5",
        "train      trial 00001 stopped early after 1 epoch(s)",
        "train      sweep: 2 trials",
    ]
    table = [line.split() for line in shown[5:]]
    assert table == [
        ["trial", "status", "epochs", "val_accuracy", "params"],
        ["*", "00000", "finished", "4", "0.9500", "lr=0.1"],
        ["00001", "stopped", "1", "0.5000", "lr=0.01235"],
    ]
