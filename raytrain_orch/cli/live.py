"""The live view of ``rto run`` in a terminal: each step's state, epochs and a sweep's trials.

``LiveView`` takes the same event records as ``LinePrinter`` and keeps a small model of the
run; ``render()`` rebuilds the picture from it, and ``rich.live.Live`` redraws it four times a
second. Failures and warnings are printed above the live area, so they stay in scrollback.
Without a terminal (CI, ``ray job submit`` logs, pipes) ``progress_view`` gives the plain lines.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from raytrain_orch.cli.progress import (
    LinePrinter,
    _metrics,
    _params,
    draining_line,
    driver_line,
    hung_line,
    resized_line,
)
from raytrain_orch.core.events import Event, EventSink
from raytrain_orch.core.plan import Plan

REFRESH_PER_SECOND = 4
MAX_TRIAL_ROWS = 12  # a long sweep shows its best, its running and its latest trials
STYLES = MappingProxyType(
    {
        "pending": "dim",
        "waiting": "yellow",
        "running": "cyan",
        "retrying": "yellow",
        "done": "green",
        "cached": "green",
        "kept": "green",
        "succeeded": "green",
        "finished": "green",
        "failed": "bold red",
        "killed": "red",
        "skipped": "dim",
        "stopped": "dim",
    }
)


@contextmanager
def progress_view(plan: Plan | None = None, stream: TextIO | None = None) -> Iterator[EventSink]:
    """The run's event sink for as long as the run lasts: the live view on a terminal, else the
    plain lines. The live display stops however the block ends (success, error, Ctrl-C, SIGTERM
    turned into KeyboardInterrupt), leaving its final picture on screen."""
    stream = stream or sys.stdout
    if not wants_live_view(stream):
        yield LinePrinter(stream)
        return
    console = Console(file=stream)
    view = LiveView(console, {s.name: s.sweep.metric if s.sweep else None for s in plan.steps} if plan else None)
    with Live(view, console=console, refresh_per_second=REFRESH_PER_SECOND, transient=False):
        yield view


def wants_live_view(stream: TextIO) -> bool:
    """A terminal that can redraw, unless ``RTO_PLAIN_PROGRESS=1`` asks for the plain lines."""
    plain = os.environ.get("RTO_PLAIN_PROGRESS") == "1" or os.environ.get("TERM") == "dumb"
    return not plain and stream.isatty()


@dataclass
class TrialView:
    number: str
    status: str = "running"
    epochs: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    best: bool = False


@dataclass
class StepView:
    name: str
    state: str = "pending"
    attempt: int = 0
    max_attempts: int | None = None
    started: float | None = None  # when its current attempt started
    waiting_since: float | None = None
    duration_s: float | None = None
    detail: str = ""  # why it waits, the one-line error, why it was skipped
    total_epochs: int | None = None
    epochs: int = 0  # epochs completed (restored ones included)
    metrics: dict[str, Any] = field(default_factory=dict)
    sweep_metric: str | None = None
    trials: dict[str, TrialView] = field(default_factory=dict)
    workers: str = ""  # an elastic step's worker group now: "2 workers (1–2)"


class LiveView:
    """Turns run events into a model of the run, and the model into a rich renderable."""

    def __init__(
        self,
        console: Console | None = None,
        steps: Mapping[str, str | None] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        """``steps``: the plan's step names in order, each with the metric its sweep ranks trials
        by (None for a step without a sweep), so steps show as pending before they start."""
        self.console = console or Console()
        self.clock = clock
        self.steps = {name: StepView(name, sweep_metric=metric) for name, metric in (steps or {}).items()}
        self.run_id, self.status = "", "starting"
        self.started, self.ended = clock(), None  # the elapsed time is the user's wait, Ray's start included
        self._lock = threading.Lock()  # events arrive on the driver thread, renders on Live's

    def __call__(self, record: Mapping[str, Any]) -> None:
        with self._lock:
            notes = self.update(record)
        for note in notes:  # outside the lock: printing above the live area renders it
            self.console.print(note)

    def __rich__(self) -> RenderableType:
        return self.render()

    # --- the model ----------------------------------------------------------------------------
    def update(self, r: Mapping[str, Any]) -> list[Text]:
        """Apply one event; return what to print above the live area."""
        event, ts = r["event"], r.get("ts", self.clock())
        if event in (Event.RUN_STARTED, Event.RUN_RESUMED):
            self.run_id, self.status = r["run_id"], "running"
            for name in r.get("kept") or []:
                self._step(name).state = "kept"
            return []
        if event == Event.RUN_FINISHED:
            self.status, self.ended = r["status"].lower(), ts
            return []
        note = driver_line(r)  # MLflow gone, back, or an operation refused
        if note:
            return [Text(note, style="yellow" if note.startswith("WARNING") else "")]
        if not r.get("step"):
            return []
        s = self._step(r["step"])
        if r.get("trial"):
            return self._trial(s, r)
        if event == Event.STEP_STARTED:
            s.state, s.attempt, s.started, s.detail, s.epochs, s.metrics = "running", r.get("attempt", 1), ts, "", 0, {}
            s.total_epochs, s.max_attempts = r.get("total_epochs"), r.get("max_attempts", s.max_attempts)
        elif event == Event.STEP_WAITING:
            s.waiting_since = (
                s.waiting_since if s.state == "waiting" else ts
            )  # it is told again as its position changes
            s.state = "waiting"
            s.detail = f"{r.get('reason', 'waiting for resources')} · queue position {r.get('position')}"
        elif event == Event.STEP_ADMITTED:
            s.state, s.detail = "running", ""
        elif event == Event.EPOCH:
            s.epochs, s.metrics = (
                (r["epoch"] + 1 if r.get("epoch") is not None else s.epochs + 1),
                dict(r.get("metrics") or {}),
            )
        elif event == Event.WORKERS_RESTARTING:
            s.detail = f"restarting workers: {r.get('reason', '')}"
            return [
                Text(
                    f"{s.name} restarting its workers from the latest checkpoint: {r.get('reason', '')}", style="yellow"
                )
            ]
        elif event == Event.WORKERS_RESIZED:
            line = resized_line(r)
            if line is None:
                return []
            s.workers = f"{r.get('world_size')} workers ({r.get('min_workers')}–{r.get('max_workers')})"
            return [Text(f"{s.name} {line}", style="cyan")] if r.get("previous") is not None else []
        elif event == Event.NODE_DRAINING:
            s.detail = "node draining"
            return [Text(f"WARNING {s.name}: {draining_line(r)}", style="yellow")]
        elif event == Event.STEP_HUNG:
            s.detail = f"hung: {r.get('reason')}"
            return [Text(f"{s.name} HUNG: {hung_line(r)}", style="bold yellow")]
        elif event == Event.RESTORED:
            s.epochs = r["epoch"] + 1 if r.get("epoch") is not None else 0
            s.detail = (
                f"resumed after epoch {s.epochs}" if r.get("epoch") is not None else "no good checkpoint: from scratch"
            )
        elif event == Event.CHECKPOINT_SKIPPED:
            return [
                Text(f"WARNING {s.name}: skipping checkpoint {r.get('checkpoint')}: {r.get('problem')}", style="yellow")
            ]
        elif event in (Event.STEP_CACHED, Event.STEP_SUCCEEDED):
            s.state, s.duration_s, s.detail = (
                ("cached" if event == Event.STEP_CACHED else "done"),
                r.get("duration_s"),
                "",
            )
            s.metrics = dict(r.get("metrics") or {})
        elif event == Event.STEP_RETRYING:
            s.state, s.attempt, s.max_attempts = "retrying", r["attempt"] + 1, r.get("max_attempts", s.max_attempts)
            s.detail = f"{_first_line(r.get('error'))} — retrying in {r.get('delay_s', 0)} s"
            return [
                Text(
                    f"{s.name} attempt {r['attempt']} failed ({r.get('kind')}): {r.get('error')} — retrying in "
                    f"{r.get('delay_s')} s",
                    style="yellow",
                )
            ]
        elif event == Event.STEP_FAILED:
            s.state, s.detail, s.duration_s = "failed", _first_line(r.get("error")), _since(s.started, ts)
            head = Text(f"{s.name} FAILED on attempt {r.get('attempt')}: {r.get('error')}", style="bold red")
            user = r.get("kind", "user") == "user"  # the cluster's faults: one line, as in the plain view
            return [head, Text(r["traceback"].rstrip())] if user and r.get("traceback") else [head]
        elif event == Event.STEP_SKIPPED:
            s.state, s.detail = "skipped", r.get("reason", "")
        elif event == Event.STEP_KILLED:
            s.state, s.duration_s = "killed", _since(s.started, ts)
        elif event == Event.SWEEP_FINISHED:
            s.sweep_metric = r.get("metric") or s.sweep_metric
            for row in r.get("trials") or []:
                t = self._trial_view(s, row["trial"])
                t.status, t.epochs, t.best = (
                    row.get("status", t.status),
                    row.get("epochs") or t.epochs,
                    bool(row.get("best")),
                )
                t.params = row.get("params") or t.params
                if isinstance(row.get(s.sweep_metric), float):
                    t.metrics[str(s.sweep_metric)] = row[s.sweep_metric]
        return []

    def _trial(self, s: StepView, r: Mapping[str, Any]) -> list[Text]:
        t = self._trial_view(s, r["trial"])
        event = r["event"]
        if event == Event.TRIAL_STARTED:
            t.status, t.params = "running", dict(r.get("params") or {})
        elif event == Event.EPOCH:
            t.epochs, t.metrics = (
                (r["epoch"] + 1 if r.get("epoch") is not None else t.epochs + 1),
                dict(r.get("metrics") or {}),
            )
        elif event == Event.TRIAL_FINISHED:
            t.status, t.metrics = "finished", dict(r.get("metrics") or t.metrics)
        elif event == Event.TRIAL_STOPPED:
            t.status, t.epochs = "stopped", r.get("epochs") or t.epochs
        return []

    def _step(self, name: str) -> StepView:
        return self.steps.setdefault(name, StepView(name))

    def _trial_view(self, s: StepView, trial: str) -> TrialView:
        return s.trials.setdefault(trial, TrialView(trial.rsplit("_", 1)[-1]))

    # --- the picture --------------------------------------------------------------------------
    def render(self) -> RenderableType:
        with self._lock:
            now = self.clock()
            elapsed = (self.ended or now) - self.started
            header = Text.assemble(
                ("run ", "bold"),
                (self.run_id or "…", "bold"),
                "  ",
                (self.status, STYLES.get(self.status, "")),
                "  ",
                (f"elapsed {clock_time(elapsed)}", "dim"),
            )
            parts: list[RenderableType] = [header, self._steps_table(now)]
            parts += [self._trials_table(s) for s in self.steps.values() if s.trials]
            return Group(*parts)

    def _steps_table(self, now: float) -> Table:
        table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold dim", expand=True)
        table.add_column("step", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("progress", no_wrap=True)
        table.add_column("time", no_wrap=True, justify="right")
        table.add_column("details", overflow="fold", ratio=1)
        for s in self.steps.values():
            state = s.state
            if state == "retrying" or (state in ("running", "waiting") and s.attempt > 1):
                state += f" {s.attempt}/{s.max_attempts}" if s.max_attempts else f" (attempt {s.attempt})"
            seconds = {"running": _since(s.started, now), "waiting": _since(s.waiting_since, now)}.get(
                s.state, s.duration_s
            )
            if s.state in ("waiting", "failed", "skipped", "retrying"):
                details = s.detail
            elif s.trials and s.state == "running":
                details = _trial_counts(list(s.trials.values()))
            else:
                details = "  ".join(part for part in (s.workers, _metrics(s.metrics), s.detail) if part)
            progress = (
                "" if s.trials or s.sweep_metric else _epochs(s.epochs, s.total_epochs)
            )  # a sweep's epochs are its trials'
            table.add_row(
                s.name,
                Text(state, STYLES.get(s.state, "")),
                progress,
                _elapsed(seconds),
                Text(details, "dim" if s.state == "skipped" else ""),
            )
        return table

    def _trials_table(self, s: StepView) -> Table:
        trials = sorted(s.trials.values(), key=lambda t: t.number)
        shown = trials
        if len(trials) > MAX_TRIAL_ROWS:  # the best and running ones, then the latest
            keep = [t for t in trials if t.best or t.status == "running"]
            keep += [t for t in reversed(trials) if t not in keep][: max(MAX_TRIAL_ROWS - len(keep), 0)]
            shown = [t for t in trials if t in keep]
        title = f"{s.name} sweep: {_trial_counts(trials)}" + (
            f" ({len(shown)} shown)" if len(shown) < len(trials) else ""
        )
        table = Table(
            title=title,
            title_justify="left",
            title_style="bold",
            box=None,
            padding=(0, 1),
            header_style="bold dim",
            expand=True,
        )
        for name in ("", "trial", "status", "epochs", s.sweep_metric or "metrics"):
            table.add_column(name, no_wrap=True)
        table.add_column("params", overflow="fold", ratio=1)
        for t in shown:
            value = (
                t.metrics.get(s.sweep_metric) if s.sweep_metric else _metrics(t.metrics)
            )  # metric unknown: show them all
            metric = f"{value:.4f}" if isinstance(value, float) else value if isinstance(value, str) else "-"
            table.add_row(
                "*" if t.best else "",
                t.number,
                Text(t.status, STYLES.get(t.status, "")),
                _epochs(t.epochs, s.total_epochs, bar=False),
                metric,
                _params(t.params),
            )
        return table


def _trial_counts(trials: list[TrialView]) -> str:
    counts = {
        status: sum(t.status == status for t in trials) for status in ("running", "finished", "stopped", "failed")
    }
    return f"{len(trials)} trials: " + ", ".join(f"{n} {status}" for status, n in counts.items() if n)


def clock_time(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _elapsed(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.1f}s" if seconds < 60 else clock_time(seconds)


def _epochs(done: int, total: int | None, bar: bool = True) -> RenderableType:
    if not total:
        return str(done) if done else ""
    if not bar:
        return f"{done}/{total}"
    cell = Table.grid(padding=(0, 1))
    cell.add_row(ProgressBar(total=total, completed=done, width=12), f"epoch {done}/{total}")
    return cell


def _since(start: float | None, now: float) -> float | None:
    return None if start is None else now - start


def _first_line(error: str | None) -> str:
    return next(iter((error or "").strip().splitlines()), "")
