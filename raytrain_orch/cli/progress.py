"""Plain, timestamped progress lines for ``rto run`` (terminals, CI and Ray job logs alike)."""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping, TextIO

from raytrain_orch.core.events import Event


def _metrics(metrics: dict[str, Any] | None) -> str:
    shown = {k: v for k, v in (metrics or {}).items() if k != "epoch"}
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())


def _params(params: dict[str, Any] | None) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in (params or {}).items())


def trial_table(step: str, metric: str, trials: list[dict[str, Any]]) -> str:
    """The sweep's trials, one row each, the best marked with *."""
    rows = [("", "trial", "status", "epochs", metric, "params")]
    for t in trials:
        value = t.get(metric)
        rows.append(
            (
                "*" if t.get("best") else "",
                t["trial"].rsplit("_", 1)[-1],
                t["status"],
                str(t.get("epochs") or "-"),
                f"{value:.4f}" if isinstance(value, float) else "-",
                _params(t.get("params")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows
    ]  # the last column unpadded
    return f"{step:<10} sweep: {len(trials)} trials\n" + "\n".join(f"           {line.rstrip()}" for line in lines)


class LinePrinter:
    """Turns run events into one line each."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self._epochs: dict[str, int | None] = {}
        self._waited: set[str] = set()

    def __call__(self, record: Mapping[str, Any]) -> None:
        line = self.format(record)
        if line:
            stamp = time.strftime("%H:%M:%S", time.localtime(record.get("ts", time.time())))
            print(f"{stamp}  {line}", file=self.stream, flush=True)

    def format(self, r: Mapping[str, Any]) -> str | None:
        event, step = r["event"], r.get("step", "")
        if r.get("trial"):  # a sweep trial's event: name the trial by its number
            step = f"{step:<10} trial {r['trial'].rsplit('_', 1)[-1]}"
        if event == Event.TRIAL_STARTED:
            return f"{step} started  {_params(r.get('params'))}"
        if event == Event.TRIAL_FINISHED:
            return f"{step} finished  {_metrics(r.get('metrics'))}"
        if event == Event.TRIAL_STOPPED:
            return f"{step} stopped early after {r.get('epochs')} epoch(s)"
        if event == Event.SWEEP_FINISHED:
            return trial_table(step, r.get("metric", ""), r.get("trials") or [])
        if event == Event.RUN_STARTED:
            return f"run {r['run_id']} started"
        if event == Event.STEP_STARTED:
            self._epochs[step] = r.get("total_epochs")
            attempt = f" (attempt {r['attempt']})" if r.get("attempt", 1) > 1 else ""
            return f"{step:<10} running{attempt}  gang {r.get('gang', '')}"
        if event == Event.EPOCH:
            total = self._epochs.get(r.get("step", ""))
            epoch = r.get("epoch")
            where = f"epoch {epoch + 1}/{total}" if total and epoch is not None else f"epoch {epoch}"
            return f"{step:<10} {where}  {_metrics(r.get('metrics'))}"
        if event == Event.STEP_WAITING:
            self._waited.add(step)
            return f"{step:<10} {r.get('reason', 'waiting for resources')} (queue position {r.get('position')})"
        if event == Event.STEP_ADMITTED and step in self._waited:
            self._waited.discard(step)
            return f"{step:<10} admitted after waiting {r['waited_s']:.1f} s"
        if event == Event.STEP_CACHED:
            return f"{step:<10} cached  {_metrics(r.get('metrics'))}".rstrip()
        if event == Event.RESTORED:
            where = (
                f"after epoch {r['epoch'] + 1}" if r.get("epoch") is not None else "from scratch (no good checkpoint)"
            )
            return f"{step:<10} resuming {where}"
        if event == Event.WORKERS_RESTARTING:
            return f"{step:<10} restarting its workers from the latest checkpoint: {r.get('reason', '')}"
        if event == Event.WORKERS_RESIZED:
            return f"{step:<10} {resized_line(r)}" if resized_line(r) else None
        if event == Event.NODE_DRAINING:
            return f"{step:<10} WARNING {draining_line(r)}"
        if event == Event.STEP_HUNG:
            return f"{step:<10} HUNG: {hung_line(r)}"
        if event == Event.CHECKPOINT_SKIPPED:
            return f"{step:<10} WARNING skipping checkpoint {r.get('checkpoint')}: {r.get('problem')}"
        if event == Event.RUN_RESUMED:
            return f"run {r['run_id']} resumed: keeping {', '.join(r.get('kept') or []) or 'no step'}"
        if event == Event.STEP_SUCCEEDED:
            return f"{step:<10} done in {r.get('duration_s', 0):.1f} s  {_metrics(r.get('metrics'))}".rstrip()
        if event == Event.STEP_RETRYING:
            return (
                f"{step:<10} attempt {r['attempt']} failed ({r['kind']}): {r['error']} — retrying in {r['delay_s']} s"
            )
        if event == Event.STEP_FAILED:
            line = f"{step:<10} FAILED on attempt {r['attempt']}: {r['error']}"
            # The step's own bug is shown with its traceback; the cluster's faults are one line
            # (their traceback is ours, kept in the run's events.jsonl).
            return (
                f"{line}\n{r.get('traceback', '').rstrip()}"
                if r.get("kind", "user") == "user" and r.get("traceback")
                else line
            )
        if event == Event.STEP_SKIPPED:
            return f"{step:<10} skipped: {r.get('reason', '')}"
        if event == Event.STEP_KILLED:
            return f"{step:<10} killed"
        if event == Event.RUN_FINISHED:
            return f"run {r['run_id']} {r['status']} in {r['duration_s']:.1f} s"
        return driver_line(r)


def resized_line(r: Mapping[str, Any]) -> str | None:
    """An elastic step's worker group size, as it starts and as it changes (None: a fixed size)."""
    low, high, size = r.get("min_workers"), r.get("max_workers"), r.get("world_size")
    if low == high:
        return None
    previous = r.get("previous")
    change = f"{size} worker(s)" if previous is None else f"workers {previous} → {size}"
    return f"{change} (elastic {low}–{high})"


def draining_line(r: Mapping[str, Any]) -> str:
    nodes = ", ".join(str(n)[:12] for n in r.get("nodes") or [])
    ranks = ", ".join(str(n) for n in r.get("ranks") or [])
    return (
        f"node {nodes} is being drained (a preemption): rank(s) {ranks} restart elsewhere from the latest "
        "checkpoint at its deadline, without spending max_failures"
    )


def hung_line(r: Mapping[str, Any]) -> str:
    return (
        f"{r.get('reason')}; the stacks of its {r.get('processes')} process(es): {r.get('stacks')}; ending the attempt"
    )


def driver_line(r: Mapping[str, Any]) -> str | None:
    """What the driver has to say of its Ray and its MLflow outbox, as one line; None for other events."""
    event = r["event"]
    if event == Event.RAY_RUNTIME:
        return runtime_line(r)
    if event == Event.TRACKING_UNAVAILABLE:
        return (
            f"WARNING MLflow unreachable at {r.get('uri')} ({r.get('error')}); training goes on, "
            f"{r.get('queued')} tracking operation(s) queued and retried with backoff"
        )
    if event == Event.TRACKING_RECOVERED:
        return f"MLflow reachable again after {r.get('down_s')} s; storing {r.get('queued')} queued operation(s)"
    if event == Event.TRACKING_DROPPED:
        return f"WARNING MLflow refused a {r.get('operation')} operation for run {r.get('run')}: {r.get('error')}"
    if event == Event.TRACKING_FLUSHING:
        return f"waiting up to {r.get('timeout_s'):.0f} s for MLflow to store {r.get('queued')} queued operation(s)…"
    if event == Event.TRACKING_LOST:
        return (
            f"WARNING MLflow at {r.get('uri')} still unreachable: {r.get('lost')} tracking operation(s) were not stored"
        )
    return None


def runtime_line(r: Mapping[str, Any]) -> str | None:
    """The one line saying which local Ray a run uses (nothing for a cluster it joins)."""
    action, address, note = r.get("action"), r.get("address"), r.get("note")
    if action == "started":
        return f"ray: started the local runtime at {address}; later runs reuse it ({note}; `rto down` stops it now)"
    if action == "restarted":
        return f"ray: restarted the local runtime at {address} for other resources ({note})"
    if action == "reused":
        return f"ray: reusing the local runtime at {address} ({note})"
    if action == "throwaway":
        return "ray: a throwaway local Ray for this run" + (f" ({note})" if note else "")
    return None
