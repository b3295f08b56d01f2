"""The live view of ``rto run`` in a terminal: each step's state, epochs and a sweep's trials.

``LiveView`` takes the same event records as ``LinePrinter`` and folds them into the run's
``RunView`` (``core.run_view``); ``render()`` draws the picture from it, and ``rich.live.Live`` redraws it four times a
second. Failures and warnings are printed above the live area, so they stay in scrollback.
Without a terminal (CI, ``ray job submit`` logs, pipes) ``progress_view`` gives the plain lines.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from raytrain_orch.cli.progress import LinePrinter
from raytrain_orch.core import sentences
from raytrain_orch.core.events import Consumer, EventSink
from raytrain_orch.core.plan import Plan
from raytrain_orch.core.run_view import RunView, StepView, TrialView
from raytrain_orch.core.text import duration

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


class LiveView(Consumer):
    """Draws the run's view (``RunView``) as a rich renderable; its hooks are the notes an event
    prints above the live area."""

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
        self.run = RunView(steps)
        self.started = clock()  # the elapsed time is the user's wait, Ray's start included
        self._lock = threading.Lock()  # events arrive on the driver thread, renders on Live's

    def __call__(self, record: Mapping[str, Any]) -> None:
        with self._lock:
            notes = self.update(record)
        for note in notes:  # outside the lock: printing above the live area renders it
            self.console.print(note)

    def __rich__(self) -> RenderableType:
        return self.render()

    def update(self, r: Mapping[str, Any]) -> list[Text]:
        """Take one event into the view; return what to print above the live area."""
        driver = sentences.DRIVER.get(r["event"])
        if driver is not None:  # MLflow gone, back, or an operation refused; the driver's Ray
            note = driver(r)
            notes = [Text(note, style="yellow" if note.startswith("WARNING") else "")] if note else []
        else:
            notes = (self.consume(r) or []) if r.get("step") and not r.get("trial") else []
        self.run.consume(r)
        return notes

    # --- the notes: what stays in scrollback --------------------------------------------------
    def on_workers_restarting(self, r: Mapping[str, Any]) -> list[Text]:
        return [Text(f"{r['step']} {sentences.workers_restarting(r)}", style="yellow")]

    def on_workers_resized(self, r: Mapping[str, Any]) -> list[Text]:
        line = sentences.workers_resized(r)
        return [Text(f"{r['step']} {line}", style="cyan")] if line and r.get("previous") is not None else []

    def on_node_draining(self, r: Mapping[str, Any]) -> list[Text]:
        return [Text(f"WARNING {r['step']}: {sentences.node_draining(r)}", style="yellow")]

    def on_step_preempting(self, r: Mapping[str, Any]) -> list[Text]:
        return [Text(f"{r['step']} {sentences.step_preempting(r)}", style="yellow")]

    def on_step_preempted(self, r: Mapping[str, Any]) -> list[Text]:
        return [Text(f"{r['step']} {sentences.step_preempted(r)}", style="yellow")]

    def on_step_admitted(self, r: Mapping[str, Any]) -> list[Text]:
        return [Text(f"{r['step']} {sentences.step_admitted(r)}", style="cyan")] if r.get("displaced") else []

    def on_step_hung(self, r: Mapping[str, Any]) -> list[Text]:
        return [Text(f"{r['step']} {sentences.step_hung(r)}", style="bold yellow")]

    def on_checkpoint_skipped(self, r: Mapping[str, Any]) -> list[Text]:
        return [Text(f"WARNING {r['step']}: {sentences.checkpoint_skipped(r)}", style="yellow")]

    def on_step_retrying(self, r: Mapping[str, Any]) -> list[Text]:
        return [Text(f"{r['step']} {sentences.step_retrying(r)}", style="yellow")]

    def on_step_failed(self, r: Mapping[str, Any]) -> list[Text]:
        head, trace = Text(f"{r['step']} {sentences.step_failed(r)}", style="bold red"), sentences.failed_traceback(r)
        return [head, Text(trace)] if trace else [head]

    # --- the picture --------------------------------------------------------------------------
    def render(self) -> RenderableType:
        with self._lock:
            now = self.clock()
            elapsed = (self.run.ended_at or now) - self.started
            status = self.run.status or "starting"
            header = Text.assemble(
                ("run ", "bold"),
                (self.run.run_id or "…", "bold"),
                "  ",
                (status, STYLES.get(status, "")),
                "  ",
                (f"elapsed {duration(elapsed)}", "dim"),
            )
            parts: list[RenderableType] = [header, self._steps_table(now)]
            parts += [self._trials_table(s) for s in self.run.steps.values() if s.trials]
            return Group(*parts)

    def _steps_table(self, now: float) -> Table:
        table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold dim", expand=True)
        table.add_column("step", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("progress", no_wrap=True)
        table.add_column("time", no_wrap=True, justify="right")
        table.add_column("details", overflow="fold", ratio=1)
        for s in self.run.steps.values():
            if s.parent is not None and s.state not in ("failed",):
                continue  # an item: its mapped step's row counts it (a failed one is shown)
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
            elif s.items is not None:
                details = s.item_counts()
            else:
                details = "  ".join(part for part in (_workers(s), sentences.metrics(s.metrics), s.detail) if part)
            progress = (
                "" if s.trials or s.sweep_metric else _epochs(s.epochs, s.total_epochs)
            )  # a sweep's epochs are its trials'
            table.add_row(
                s.name,
                Text(state, STYLES.get(s.state, "")),
                progress,
                "" if seconds is None else duration(seconds),
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
                t.metrics.get(s.sweep_metric) if s.sweep_metric else sentences.metrics(t.metrics)
            )  # metric unknown: show them all
            metric = f"{value:.4f}" if isinstance(value, float) else value if isinstance(value, str) else "-"
            table.add_row(
                "*" if t.best else "",
                t.number,
                Text(t.status, STYLES.get(t.status, "")),
                _epochs(t.epochs, s.total_epochs, bar=False),
                metric,
                sentences.values(t.params),
            )
        return table


def _trial_counts(trials: list[TrialView]) -> str:
    counts = {
        status: sum(t.status == status for t in trials) for status in ("running", "finished", "stopped", "failed")
    }
    return f"{len(trials)} trials: " + ", ".join(f"{n} {status}" for status, n in counts.items() if n)


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


def _workers(s: StepView) -> str:
    return sentences.worker_group(s.workers) if s.workers else ""
