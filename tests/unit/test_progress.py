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
