"""Plain, timestamped progress lines for ``rto run`` (terminals, CI and Ray job logs alike)."""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping, TextIO

from raytrain_orch.core import sentences
from raytrain_orch.core.events import Consumer
from raytrain_orch.core.run_view import RunView

Record = Mapping[str, Any]


def trial_table(step: str, metric: str, trials: list[dict[str, Any]]) -> str:
    """The sweep's trials, one row each, the best marked with *."""
    rows = [("", "trial", "status", "epochs", metric, "params")]
    for t in trials:
        value = t.get(metric)
        rows.append(
            (
                "*" if t.get("best") else "",
                sentences.trial_number(t["trial"]),
                t["status"],
                str(t.get("epochs") or "-"),
                f"{value:.4f}" if isinstance(value, float) else "-",
                sentences.values(t.get("params")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows
    ]  # the last column unpadded
    return f"{step:<10} sweep: {len(trials)} trials\n" + "\n".join(f"           {line.rstrip()}" for line in lines)


class LinePrinter(Consumer):
    """Turns run events into one line each: a hook per event that has something to say."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self.view = RunView()  # what came before: a step's epochs in all, whether it waited

    def __call__(self, record: Record) -> None:
        line = self.format(record)
        if line:
            stamp = time.strftime("%H:%M:%S", time.localtime(record.get("ts", time.time())))
            print(f"{stamp}  {line}", file=self.stream, flush=True)

    def format(self, r: Record) -> str | None:
        """The record's line (None: nothing to say), then the record taken into the view."""
        driver = sentences.DRIVER.get(r["event"])
        line = driver(r) if driver is not None else self.consume(r)
        self.view.consume(r)
        return line

    @staticmethod
    def _at(r: Record, sentence: str | None) -> str | None:
        """The sentence after its step (and trial, by number), in the step column."""
        step = r.get("step", "")
        if r.get("trial"):
            step = f"{step:<10} trial {sentences.trial_number(r['trial'])}"
        return None if sentence is None else f"{step:<10} {sentence}"

    # --- the run ------------------------------------------------------------------------------
    def on_run_started(self, r: Record) -> str:
        return sentences.run_started(r)

    def on_run_resumed(self, r: Record) -> str:
        return sentences.run_resumed(r)

    def on_run_finished(self, r: Record) -> str:
        return sentences.run_finished(r)

    # --- step attempts ------------------------------------------------------------------------
    def on_step_started(self, r: Record) -> str | None:
        return self._at(r, sentences.step_started(r))

    def on_step_waiting(self, r: Record) -> str | None:
        return self._at(r, sentences.step_waiting(r))

    def on_step_admitted(self, r: Record) -> str | None:
        waited = self.view.step(r["step"]).state == "waiting"
        return self._at(r, sentences.step_admitted(r)) if waited or r.get("displaced") else None

    def on_step_preempting(self, r: Record) -> str | None:
        return self._at(r, f"WARNING {sentences.step_preempting(r)}")

    def on_step_preempted(self, r: Record) -> str | None:
        return self._at(r, sentences.step_preempted(r))

    def on_step_cached(self, r: Record) -> str | None:
        return self._at(r, sentences.step_cached(r))

    def on_step_succeeded(self, r: Record) -> str | None:
        return self._at(r, sentences.step_succeeded(r))

    def on_step_retrying(self, r: Record) -> str | None:
        return self._at(r, sentences.step_retrying(r))

    def on_step_failed(self, r: Record) -> str | None:
        line, trace = self._at(r, sentences.step_failed(r)), sentences.failed_traceback(r)
        return f"{line}\n{trace}" if trace else line

    def on_step_skipped(self, r: Record) -> str | None:
        return self._at(r, sentences.step_skipped(r))

    def on_step_killed(self, r: Record) -> str | None:
        return self._at(r, sentences.step_killed(r))

    def on_step_hung(self, r: Record) -> str | None:
        return self._at(r, sentences.step_hung(r))

    # --- workers ------------------------------------------------------------------------------
    def on_epoch(self, r: Record) -> str | None:
        return self._at(r, sentences.epoch(r, self.view.step(r["step"]).total_epochs))

    def on_restored(self, r: Record) -> str | None:
        return self._at(r, sentences.restored(r))

    def on_checkpoint_skipped(self, r: Record) -> str | None:
        return self._at(r, f"WARNING {sentences.checkpoint_skipped(r)}")

    def on_workers_restarting(self, r: Record) -> str | None:
        return self._at(r, sentences.workers_restarting(r))

    def on_workers_resized(self, r: Record) -> str | None:
        return self._at(r, sentences.workers_resized(r))

    def on_node_draining(self, r: Record) -> str | None:
        return self._at(r, f"WARNING {sentences.node_draining(r)}")

    # --- sweeps -------------------------------------------------------------------------------
    def on_trial_started(self, r: Record) -> str | None:
        return self._at(r, sentences.trial_started(r))

    def on_trial_finished(self, r: Record) -> str | None:
        return self._at(r, sentences.trial_finished(r))

    def on_trial_stopped(self, r: Record) -> str | None:
        return self._at(r, sentences.trial_stopped(r))

    def on_sweep_finished(self, r: Record) -> str:
        return trial_table(r.get("step", ""), r.get("metric", ""), r.get("trials") or [])
