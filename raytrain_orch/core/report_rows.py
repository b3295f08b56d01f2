"""The run report's rows: one per step attempt, mapped item and sweep trial, each cut into the
spans of its time — waiting for its gang, starting up, working, standing still for checkpoints,
lost to restarts and hangs, tearing down — from the run's events alone.

Each span is measured where it happens. The boundaries the driver sees (an attempt's start and
end, its admission) are the driver's timestamps; an epoch is the train worker's own measure
(``epoch_s``, ``log_s``, ``report_s``, ending when rank 0 sent it); a task's work runs from when
its code began to its final ``usage`` record. So a row's spans add up to its wall time only when
those measures agree, and ``unaccounted_s`` says by how much they do not.

Lost work is work done again: an epoch whose number was already done (after a restore, or in a
later attempt) counts as ``restart``, as does the time from a failure to the first epoch after
it, the unfinished tail of an attempt that is retried, and the delay before the retry. A hung
attempt's time from its last progress to its end is ``hang``. Pure: no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping

Record = Mapping[str, Any]

#: The parts of a row's time, in the order they are shown.
PARTS = ("wait", "startup", "work", "checkpoint", "restart", "hang", "teardown")

#: Events that end a step attempt, and how.
_ENDS = MappingProxyType(
    {
        "step_succeeded": "succeeded",
        "step_failed": "failed",
        "step_retrying": "retried",
        "step_killed": "killed",
        "step_preempted": "preempted",
    }
)
_TRIAL_ENDS = MappingProxyType({"trial_finished": "finished", "trial_stopped": "stopped", "trial_failed": "failed"})
#: The markers a timeline shows on a row, by event.
_MARKS = MappingProxyType(
    {
        "workers_restarting": "restart",
        "step_hung": "hang",
        "step_preempting": "preempting",
        "step_preempted": "preempted",
        "node_draining": "draining",
        "restored": "restored",
    }
)


@dataclass
class Span:
    kind: str  # one of PARTS
    start: float
    end: float
    label: str = ""

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass
class Usage:
    """What a row's processes used: the latest cumulative record of each process."""

    cpu_s: float = 0.0
    gpu_busy_s: float | None = None  # None: no process measured a GPU
    gpu_memory_mb: float | None = None
    gpu_notes: set[str] = field(default_factory=set)
    processes: int = 0


@dataclass
class Row:
    """One attempt of a step, one mapped item's attempt, or one sweep trial."""

    key: str
    step: str  # the plan's step it belongs to
    kind: str  # attempt, item, trial
    label: str
    attempt: int | None
    start: float
    end: float
    outcome: str  # succeeded, failed, retried, killed, preempted, running; a trial's finished, stopped
    spans: list[Span] = field(default_factory=list)
    marks: list[tuple[str, float, str]] = field(default_factory=list)  # (kind, at, text)
    admitted: float | None = None
    usage: Usage = field(default_factory=Usage)
    world_size: int | None = None  # an elastic train step's last worker group size

    @property
    def wall_s(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def held_s(self) -> float:
        """How long it held its gang: admission to its end."""
        return 0.0 if self.admitted is None else max(0.0, self.end - self.admitted)

    def parts(self) -> dict[str, float]:
        total = dict.fromkeys(PARTS, 0.0)
        for span in self.spans:
            total[span.kind] += span.seconds
        return total

    @property
    def unaccounted_s(self) -> float:
        return self.wall_s - sum(self.parts().values())


def when(r: Record) -> float:
    """When a worker's record happened: sent then (``sent_ts``), else recorded then."""
    return float(r.get("sent_ts") or r.get("ts") or 0.0)


class Progress:
    """The epoch numbers a step (or trial) has done so far, across its attempts: what a later
    epoch of the same number redoes."""

    def __init__(self) -> None:
        self.done: int | None = None

    def redone(self, epoch: int | None) -> bool:
        if epoch is None:
            return False
        again = self.done is not None and epoch <= self.done
        self.done = epoch if self.done is None else max(self.done, epoch)
        return again


def attempt_row(
    key: str,
    step: str,
    kind: str,
    label: str,
    records: list[Record],
    progress: Progress,
    end_events: Mapping[str, str],
    run_end: float,
) -> Row:
    """A row of a train or task attempt (or trial), from its records in order."""
    start = float(records[0]["ts"])
    outcome, end = "running", run_end
    admitted = epochs_seen = None
    for r in records:
        event = r.get("event", "")
        if event in end_events and outcome == "running":  # a trial stopped early may fail on its way out
            outcome, end = end_events[event], float(r["ts"])
        elif event == "step_admitted" and admitted is None:
            admitted = float(r["ts"])
        elif event == "step_started":
            start = float(r["ts"])
    row = Row(key, step, kind, label, _attempt(records), start, max(end, start), outcome, admitted=admitted)
    for r in records:
        event = r.get("event", "")
        if event in _MARKS:
            at = float(r.get("detected_ts") or r["ts"]) if event == "step_hung" else when(r)
            row.marks.append((_MARKS[event], at, _mark_text(r)))
        elif event in ("step_failed", "step_retrying") and r.get("error"):
            row.marks.append(("failed", float(r["ts"]), str(r["error"]).splitlines()[0][:200]))
        elif event == "workers_resized":
            row.world_size = int(r["world_size"])
        elif event == "epoch":
            epochs_seen = True
    _usage(row, records)
    if admitted is None:  # ended (or still) waiting for its gang
        row.spans.append(Span("wait", start, row.end))
        return row
    row.spans.append(Span("wait", start, admitted))
    if epochs_seen:
        _epoch_spans(row, records, progress)
    else:
        _task_spans(row, records)
    return row


def _attempt(records: list[Record]) -> int | None:
    for r in records:
        if isinstance(r.get("attempt"), int):
            return int(r["attempt"])
    return None


def _epoch_spans(row: Row, records: list[Record], progress: Progress) -> None:
    """A train attempt's spans: start-up to its first epoch, then epoch by epoch (work and
    checkpoint stall, or lost when redone), recovery after a restart, and its tail."""
    assert row.admitted is not None
    cursor, phase = row.admitted, "startup"
    restarts = sorted(when(r) for r in records if r.get("event") == "workers_restarting")
    for r in records:
        if r.get("event") != "epoch":
            continue
        ended = when(r)
        working = float(r.get("epoch_s") or 0.0) + float(r.get("log_s") or 0.0)
        began = ended - working - float(r.get("report_s") or 0.0)
        if any(cursor < t <= began for t in restarts):
            phase = "restart"  # from the failure to this epoch: recovery
        row.spans.append(Span(phase, cursor, max(cursor, began)))
        lost = progress.redone(r.get("epoch"))
        label = f"epoch {r['epoch']}" if r.get("epoch") is not None else "epoch"
        row.spans.append(
            Span("restart" if lost else "work", began, began + working, label + (" (redone)" if lost else ""))
        )
        row.spans.append(Span("restart" if lost else "checkpoint", began + working, ended, label))
        cursor, phase = ended, "work"
    failed_after = any(t > cursor for t in restarts)
    row.spans.append(Span(_tail(row, records, failed_after), cursor, max(cursor, row.end)))


def _task_spans(row: Row, records: list[Record]) -> None:
    """A task attempt's spans: start-up until its code began, its work until its final usage
    record (lost when the attempt is retried or hung), and its tail."""
    assert row.admitted is not None
    usage = [r for r in records if r.get("event") == "usage"]
    hung = next((r for r in records if r.get("event") == "step_hung"), None)
    stuck = None if hung is None else float(hung.get("detected_ts") or hung["ts"]) - float(hung.get("idle_s") or 0)
    began = min((float(r["since"]) for r in usage), default=stuck)  # hung before its first sample: from then
    if began is None:  # never ran its code, or ended before its first sample: start-up (lost if retried)
        row.spans.append(Span("restart" if row.outcome == "retried" else "startup", row.admitted, row.end))
        return
    began = min(max(row.admitted, began), row.end)
    row.spans.append(Span("startup", row.admitted, began))
    final = [when(r) for r in usage if r.get("final")]
    if stuck is not None:  # from its last sign of life (its final sample is sent as it is ended)
        ended = max(began, stuck)
    elif final:
        ended = max(began, final[-1])
    else:
        ended = row.end
    lost = row.outcome == "retried" or hung is not None
    row.spans.append(Span("restart" if lost else "work", began, min(ended, row.end)))
    row.spans.append(Span(_tail(row, records, False), min(ended, row.end), row.end))


def _tail(row: Row, records: list[Record], failed_after: bool) -> str:
    """What the time after an attempt's last progress was: a hang, lost (a failure it is retried
    after), or its teardown."""
    if any(r.get("event") == "step_hung" for r in records):
        return "hang"
    if failed_after or row.outcome == "retried":
        return "restart"
    return "teardown"


def _usage(row: Row, records: Iterable[Record]) -> None:
    latest: dict[tuple[str, int], Record] = {}
    for r in records:
        if r.get("event") == "usage":
            latest[(str(r.get("host")), int(r.get("pid") or 0))] = r
    usage = row.usage
    usage.processes = len(latest)
    for r in latest.values():
        usage.cpu_s += float(r.get("cpu_s") or 0.0)
        gpu = r.get("gpu")
        if gpu:
            usage.gpu_busy_s = (usage.gpu_busy_s or 0.0) + float(gpu.get("busy_s") or 0.0)
            usage.gpu_memory_mb = max(usage.gpu_memory_mb or 0.0, float(gpu.get("memory_mb") or 0.0))
        elif r.get("gpu_note"):
            usage.gpu_notes.add(str(r["gpu_note"]))


def _mark_text(r: Record) -> str:
    event = r.get("event")
    if event == "workers_restarting":
        return f"workers restarting: {r.get('reason', '')}"[:200]
    if event == "step_hung":
        return f"hung: no progress for {float(r.get('idle_s') or 0):.0f} s"
    if event in ("step_preempting", "step_preempted"):
        return f"preempted by {r.get('by')}"
    if event == "restored":
        return f"restored epoch {r.get('epoch')}" if r.get("epoch") is not None else "started fresh"
    if event == "node_draining":
        return f"node draining: {', '.join(r.get('nodes') or [])}"
    return str(event)


def group(records: Iterable[Record]) -> dict[str, dict[tuple[int | None, str | None], list[Record]]]:
    """Records by unit (a step, or a mapped step's ``STEP[i]``), then by (attempt, trial)."""
    units: dict[str, dict[tuple[int | None, str | None], list[Record]]] = {}
    for r in records:
        step = r.get("step")
        if not step:
            continue
        attempt = r.get("attempt") if isinstance(r.get("attempt"), int) else None
        units.setdefault(step, {}).setdefault((attempt, r.get("trial")), []).append(r)
    return units


def trial_row(step: str, name: str, records: list[Record], run_end: float) -> Row:
    label = f"{step} trial {name.rsplit('_', 1)[-1]}"
    return attempt_row(f"{step}/{name}", step, "trial", label, records, Progress(), _TRIAL_ENDS, run_end)


def step_row(unit: str, step: str, kind: str, records: list[Record], progress: Progress, run_end: float) -> Row:
    attempt = _attempt(records)
    label = f"{unit} #{attempt}" if attempt else unit
    return attempt_row(f"{unit}#{attempt}", step, kind, label, records, progress, _ENDS, run_end)


def umbrella_row(unit: str, kind: str, records: list[Record], children: list[Row], run_end: float) -> Row:
    """A sweep's or mapped step's attempt: start-up until its first trial or item began, then
    those (its work, detailed in their rows), then its teardown."""
    attempt = _attempt(records)
    start = float(records[0]["ts"])
    outcome, end = "running", run_end
    for r in records:
        if r.get("event") in _ENDS and not r.get("trial"):
            outcome, end = _ENDS[r["event"]], float(r["ts"])
    row = Row(f"{unit}#{attempt}", unit, kind, f"{unit} #{attempt}" if attempt else unit, attempt, start, end, outcome)
    if not children:
        row.spans.append(Span("startup", start, end))
        return row
    first, last = min(c.start for c in children), max(c.end for c in children)
    row.spans += [
        Span("startup", start, max(start, first)),
        Span("work", max(start, first), max(start, last), "items" if kind == "mapped" else "trials"),
    ]
    row.spans.append(Span("teardown", max(start, last), max(start, last, end)))
    return row
