"""The run as its events tell it: one reducer (``RunView``) that every reader of events shares.

``RunView`` folds records, in order, into the run's state: its id, status and times; per step
its state, attempt, progress, metrics, worker group, hangs and last event; per swept step its
trials at the latest attempt; and the driver's notes (MLflow unreachable, back, an operation
refused, a dead driver's run ended). The live view draws it, ``rto status`` and ``rto runs``
read it from ``events.jsonl``; neither parses events on its own. Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from raytrain_orch.core import sentences
from raytrain_orch.core.events import Consumer, Event
from raytrain_orch.core.text import gist

Record = Mapping[str, Any]

#: The driver's notes a view keeps: the latest ones.
NOTES_KEPT = 5
_NOTES = frozenset(
    {
        Event.TRACKING_UNAVAILABLE,
        Event.TRACKING_RECOVERED,
        Event.TRACKING_DROPPED,
        Event.RUN_RECONCILED,
        Event.NOTIFY_FAILED,
    }
)


@dataclass
class TrialView:
    number: str
    status: str = "running"  # running, finished, stopped, failed
    epochs: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    best: bool = False


@dataclass
class StepView:
    name: str
    #: pending, waiting, running, retrying, done, cached, kept, failed, killed, skipped
    state: str = "pending"
    attempt: int = 0  # the attempt running, or the next one while retrying
    max_attempts: int | None = None
    started: float | None = None  # when its current attempt started
    waiting_since: float | None = None
    duration_s: float | None = None
    detail: str = ""  # why it waits, the one-line error, why it was skipped
    total_epochs: int | None = None
    epochs: int = 0  # epochs completed (restored ones included)
    reported: int | None = None  # epochs its attempt's workers reported done (None before the first)
    metrics: dict[str, Any] = field(default_factory=dict)
    workers: dict[str, Any] | None = None  # an elastic group now: world_size, min_workers, max_workers
    hung: list[dict[str, Any]] = field(default_factory=list)  # every attempt found hung
    last_event: str | None = None
    last_event_at: float | None = None
    sweep_metric: str | None = None
    trials: dict[str, TrialView] = field(default_factory=dict)  # by trial name, of trials_attempt
    trials_attempt: int | None = None
    sweep_table: list[dict[str, Any]] | None = None  # the finished sweep's trials, as it reported them
    preempted: str | None = None  # while a preempted step waits to resume: by whom, from which epoch
    items: int | None = None  # a mapped step: how many items; its units are rows of their own, parent set
    parent: str | None = None  # an item's unit: its mapped step
    units: dict[str, str] = field(default_factory=dict)  # a mapped step: each unit's state, by unit name

    def item_counts(self) -> str:
        """``3/8 items done, 2 running`` (and failed), for a mapped step."""
        states = list(self.units.values())
        done = sum(state in ("done", "cached") for state in states)
        running = sum(state in ("running", "waiting", "retrying") for state in states)
        failed = sum(state == "failed" for state in states)
        text = f"{done}/{self.items} items done"
        text += f", {running} running" if running else ""
        return text + (f", {failed} failed" if failed else "")

    preemptions: int = 0
    displaced: list[str] = field(default_factory=list)  # gangs preempted to admit it (RUN/STEP)


class RunView(Consumer):
    """The run's state, one record at a time (``consume``)."""

    def __init__(self, steps: Mapping[str, str | None] | None = None):
        """``steps``: the plan's step names in order, each with the metric its sweep ranks trials
        by (None for a step without a sweep), so steps show as pending before they start."""
        self.run_id, self.status = "", ""
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.steps = {name: StepView(name, sweep_metric=metric) for name, metric in (steps or {}).items()}
        self.notes: deque[Record] = deque(maxlen=NOTES_KEPT)

    @classmethod
    def of(cls, records: Iterable[Record]) -> RunView:
        """The view of a run's recorded events."""
        view = cls()
        for record in records:
            view.consume(record)
        return view

    def step(self, name: str) -> StepView:
        return self.steps.setdefault(name, StepView(name))

    def consume(self, record: Record) -> None:
        name = record.get("step")
        if name and record.get("trial"):
            self._trial(record)
        elif name:
            s = self.step(name)
            s.last_event, s.last_event_at = record.get("event"), record.get("ts")
        if record.get("event") in _NOTES:
            self.notes.append(record)
        super().consume(record)
        unit = self.steps.get(name or "")
        if unit is not None and unit.parent is not None:  # an item's unit: its mapped step counts it
            self.steps[unit.parent].units[unit.name] = unit.state

    def on_step_mapped(self, r: Record) -> None:
        s = self.step(r["step"])
        s.state, s.items, s.attempt, s.started, s.detail = "running", r["items"], r["attempt"], r.get("ts"), ""
        s.units = {}
        for index in range(r["items"]):
            self.step(f"{s.name}[{index}]").parent = s.name

    # --- the run ------------------------------------------------------------------------------
    def on_run_started(self, r: Record) -> None:
        self.run_id, self.status, self.started_at = r.get("run_id", ""), "running", r.get("ts")

    def on_run_resumed(self, r: Record) -> None:
        self.on_run_started(r)
        self.ended_at = None
        for name in r.get("kept") or []:
            self.step(name).state = "kept"

    def on_run_finished(self, r: Record) -> None:
        self.status, self.ended_at = str(r.get("status", "")).lower(), r.get("ts")

    # --- step attempts ------------------------------------------------------------------------
    def on_step_started(self, r: Record) -> None:
        s = self.step(r["step"])
        s.state, s.attempt, s.started = "running", r.get("attempt", 1), r.get("ts")
        s.detail = s.preempted or ""
        s.epochs, s.reported, s.metrics, s.workers = 0, None, {}, None
        s.total_epochs, s.max_attempts = r.get("total_epochs"), r.get("max_attempts", s.max_attempts)

    def on_step_waiting(self, r: Record) -> None:
        if (s := self._current(r)) is not None:
            s.waiting_since = s.waiting_since if s.state == "waiting" else r.get("ts")  # told again as it moves up
            s.state, s.detail = "waiting", sentences.waiting_detail(r)  # a preempted step's reason says so first

    def on_step_admitted(self, r: Record) -> None:
        if r.get("trial"):  # a sweep trial's own gang: the step runs on
            return
        if (s := self._current(r)) is not None:
            s.state, s.detail, s.preempted = "running", "", None
            s.displaced = list(r.get("displaced") or s.displaced)

    def on_step_preempting(self, r: Record) -> None:
        if (s := self._current(r)) is not None:
            s.detail = sentences.step_preempting(r)

    def on_step_preempted(self, r: Record) -> None:
        s = self.step(r["step"])
        s.state, s.attempt, s.detail = "waiting", r["attempt"] + 1, sentences.step_preempted(r)
        s.preempted, s.preemptions = s.detail, s.preemptions + 1
        s.waiting_since = r.get("ts")

    def on_step_cached(self, r: Record) -> None:
        self._done(r, "cached")

    def on_step_succeeded(self, r: Record) -> None:
        self._done(r, "done")

    def _done(self, r: Record, state: str) -> None:
        s = self.step(r["step"])
        s.state, s.duration_s, s.detail, s.metrics = state, r.get("duration_s"), "", dict(r.get("metrics") or {})

    def on_step_retrying(self, r: Record) -> None:
        s = self.step(r["step"])
        s.state, s.attempt, s.max_attempts = "retrying", r["attempt"] + 1, r.get("max_attempts", s.max_attempts)
        s.detail = sentences.retrying_detail(r)

    def on_step_failed(self, r: Record) -> None:
        s = self.step(r["step"])
        s.state, s.detail, s.duration_s = "failed", gist(r.get("error")), _since(s.started, r.get("ts"))

    def on_step_skipped(self, r: Record) -> None:
        s = self.step(r["step"])
        s.state, s.detail = "skipped", r.get("reason", "")

    def on_step_killed(self, r: Record) -> None:
        s = self.step(r["step"])
        s.state, s.duration_s = "killed", _since(s.started, r.get("ts"))

    def on_step_hung(self, r: Record) -> None:
        s = self.step(r["step"])
        s.hung.append({k: r.get(k) for k in ("attempt", "reason", "stacks")})
        if self._current(r) is not None:
            s.detail = sentences.hung_detail(r)

    # --- workers ------------------------------------------------------------------------------
    def on_epoch(self, r: Record) -> None:
        if r.get("trial"):
            if (t := self._trial(r)) is not None:
                t.epochs = r["epoch"] + 1 if r.get("epoch") is not None else t.epochs + 1
                t.metrics = dict(r.get("metrics") or {})
        elif (s := self._current(r)) is not None:
            s.epochs = r["epoch"] + 1 if r.get("epoch") is not None else s.epochs + 1
            s.reported = r["epoch"] + 1 if r.get("epoch") is not None else s.reported
            s.metrics = dict(r.get("metrics") or {})

    def on_restored(self, r: Record) -> None:
        if not r.get("trial") and (s := self._current(r)) is not None:
            s.epochs = r["epoch"] + 1 if r.get("epoch") is not None else 0
            s.detail = sentences.restored_detail(r)

    def on_workers_restarting(self, r: Record) -> None:
        if not r.get("trial") and (s := self._current(r)) is not None:
            s.detail = sentences.restarting_detail(r)

    def on_workers_resized(self, r: Record) -> None:
        elastic = r.get("min_workers") != r.get("max_workers")
        if not r.get("trial") and elastic and (s := self._current(r)) is not None:
            s.workers = {k: r.get(k) for k in ("world_size", "min_workers", "max_workers")}

    def on_node_draining(self, r: Record) -> None:
        if not r.get("trial") and (s := self._current(r)) is not None:
            s.detail = "node draining"

    def _current(self, r: Record) -> StepView | None:
        """The step of a record of its current attempt; None for a late one of an earlier attempt."""
        s = self.step(r["step"])
        attempt = r.get("attempt")
        return None if isinstance(attempt, int) and attempt < s.attempt else s

    # --- sweeps -------------------------------------------------------------------------------
    def on_trial_started(self, r: Record) -> None:
        if (t := self._trial(r)) is not None:
            t.status, t.params = "running", dict(r.get("params") or {})

    def on_trial_finished(self, r: Record) -> None:
        if (t := self._trial(r)) is not None:
            t.status, t.metrics = "finished", dict(r.get("metrics") or t.metrics)

    def on_trial_stopped(self, r: Record) -> None:
        if (t := self._trial(r)) is not None:
            t.status, t.epochs = "stopped", r.get("epochs") or t.epochs

    def on_trial_failed(self, r: Record) -> None:
        if (t := self._trial(r)) is not None and t.status == "running":  # a stop outranks the failure it causes
            t.status = "failed"

    def on_sweep_finished(self, r: Record) -> None:
        s = self.step(r["step"])
        if not self._trials_of(s, r.get("attempt")):
            return
        s.sweep_metric = r.get("metric") or s.sweep_metric
        s.sweep_table = list(r.get("trials") or [])
        for row in s.sweep_table:
            t = s.trials.setdefault(row["trial"], TrialView(sentences.trial_number(row["trial"])))
            t.status, t.epochs, t.best = (
                row.get("status", t.status),
                row.get("epochs") or t.epochs,
                bool(row.get("best")),
            )
            t.params = row.get("params") or t.params
            value = row.get(s.sweep_metric or "")
            if isinstance(value, float):
                t.metrics[str(s.sweep_metric)] = value

    def _trial(self, r: Record) -> TrialView | None:
        """The view of a record's trial, at its step's latest attempt (None for an earlier one's)."""
        s = self.step(r["step"])
        if not self._trials_of(s, r.get("attempt")):
            return None
        return s.trials.setdefault(r["trial"], TrialView(sentences.trial_number(r["trial"])))

    @staticmethod
    def _trials_of(s: StepView, attempt: Any) -> bool:
        """Whether an attempt's trials are the ones shown; a later attempt's replace them."""
        if not isinstance(attempt, int) or attempt == s.trials_attempt:
            return True
        if s.trials_attempt is not None and attempt < s.trials_attempt:
            return False
        s.trials.clear()
        s.trials_attempt, s.sweep_table = attempt, None
        return True


def _since(start: float | None, now: float | None) -> float | None:
    return None if start is None or now is None else now - start
