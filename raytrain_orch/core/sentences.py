"""What a user reads about each event, written once: one function per event, named after it.

Each returns the sentence without the step it is about (a view puts the step where its layout
wants it): the plain lines of ``cli.progress``, the live view's notes and its table's details
all read them. None means the event has nothing to say.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from raytrain_orch.core.events import Event
from raytrain_orch.core.text import gist

Record = Mapping[str, Any]


def values(shown: Mapping[str, Any] | None) -> str:
    """``name=value`` pairs, floats to 4 significant digits."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in (shown or {}).items())


def metrics(shown: Mapping[str, Any] | None) -> str:
    """A record's metrics, less the epoch (the line says it already)."""
    return values({k: v for k, v in (shown or {}).items() if k != "epoch"})


def trial_number(trial: str) -> str:
    """A Tune trial's name as shown: its number (``train_a1b2c_00001`` → ``00001``)."""
    return trial.rsplit("_", 1)[-1]


# --- the run -------------------------------------------------------------------------------------


def run_started(r: Record) -> str:
    return f"run {r['run_id']} started"


def run_resumed(r: Record) -> str:
    return f"run {r['run_id']} resumed: keeping {', '.join(r.get('kept') or []) or 'no step'}"


def run_finished(r: Record) -> str:
    return f"run {r['run_id']} {r['status']} in {r['duration_s']:.1f} s"


# --- step attempts -------------------------------------------------------------------------------


def step_started(r: Record) -> str:
    attempt = f" (attempt {r['attempt']})" if r.get("attempt", 1) > 1 else ""
    return f"running{attempt}  gang {r.get('gang', '')}"


def step_waiting(r: Record) -> str:
    return f"{r.get('reason', 'waiting for resources')} (queue position {r.get('position')})"


def waiting_detail(r: Record) -> str:
    """Why a step waits, as its row in the live view says it."""
    return f"{r.get('reason', 'waiting for resources')} · queue position {r.get('position')}"


def step_admitted(r: Record) -> str:
    displaced = f"; displaced {', '.join(r['displaced'])}" if r.get("displaced") else ""
    return f"admitted after waiting {r['waited_s']:.1f} s{displaced}"


def preempter(r: Record) -> str:
    return f"{r['by']} (priority {r['priority']}, queue {r['queue']})"


def step_preempting(r: Record) -> str:
    if r.get("keep"):
        return f"shrinking to {r['keep']} worker(s) for {preempter(r)}: checkpointing at its next report"
    return f"preempted by {preempter(r)}: checkpointing at its next report, then stopping"


def step_preempted(r: Record) -> str:
    """What a preempted step says while it waits (console, live view, ``rto status``)."""
    where = f"epoch {r['epoch']}" if r.get("epoch") is not None else "its latest checkpoint"
    if r.get("keep"):
        return f"shrunk to {r['keep']} worker(s) for {preempter(r)}; resuming from {where}"
    return f"preempted by {preempter(r)}; waiting to resume from {where}"


def step_cached(r: Record) -> str:
    return f"cached  {metrics(r.get('metrics'))}".rstrip()


def step_succeeded(r: Record) -> str:
    return f"done in {r.get('duration_s', 0):.1f} s  {metrics(r.get('metrics'))}".rstrip()


def step_retrying(r: Record) -> str:
    return f"attempt {r.get('attempt')} failed ({r.get('kind')}): {r.get('error')} — retrying in {r.get('delay_s')} s"


def retrying_detail(r: Record) -> str:
    """A retrying step's row: its error's first line and when it runs again."""
    return f"{gist(r.get('error'))} — retrying in {r.get('delay_s', 0)} s"


def step_failed(r: Record) -> str:
    return f"FAILED on attempt {r.get('attempt')}: {r.get('error')}"


def failed_traceback(r: Record) -> str | None:
    """The traceback shown under a failure: the step's own bug's, as it was. The cluster's faults
    are one line (their traceback is ours, kept in the run's events.jsonl)."""
    if r.get("kind", "user") == "user" and r.get("traceback"):
        return str(r["traceback"]).rstrip()
    return None


def step_skipped(r: Record) -> str:
    return f"skipped ({r.get('reason', '')})"


def step_killed(r: Record) -> str:
    return "killed"


def step_hung(r: Record) -> str:
    return (
        f"HUNG: {r.get('reason')}; the stacks of its {r.get('processes')} process(es): {r.get('stacks')}; "
        "ending the attempt"
    )


def hung_detail(r: Record) -> str:
    return f"hung: {r.get('reason')}"


# --- workers -------------------------------------------------------------------------------------


def epoch(r: Record, total: int | None) -> str:
    number = r.get("epoch")
    where = f"epoch {number + 1}/{total}" if total and number is not None else f"epoch {number}"
    return f"{where}  {metrics(r.get('metrics'))}"


def restored(r: Record) -> str:
    where = f"after epoch {r['epoch'] + 1}" if r.get("epoch") is not None else "from scratch (no good checkpoint)"
    return f"resuming {where}"


def restored_detail(r: Record) -> str:
    return f"resumed after epoch {r['epoch'] + 1}" if r.get("epoch") is not None else "no good checkpoint: from scratch"


def checkpoint_skipped(r: Record) -> str:
    return f"skipping checkpoint {r.get('checkpoint')}: {r.get('problem')}"


def workers_restarting(r: Record) -> str:
    return f"restarting its workers from the latest checkpoint: {r.get('reason', '')}"


def restarting_detail(r: Record) -> str:
    return f"restarting workers: {r.get('reason', '')}"


def workers_resized(r: Record) -> str | None:
    """An elastic step's worker group size, as it starts and as it changes (None: a fixed size)."""
    low, high, size = r.get("min_workers"), r.get("max_workers"), r.get("world_size")
    if low == high:
        return None
    previous = r.get("previous")
    change = f"{size} worker(s)" if previous is None else f"workers {previous} → {size}"
    return f"{change} (elastic {low}–{high})"


def worker_group(workers: Mapping[str, Any]) -> str:
    """An elastic group as it is now: ``2 workers (1–2)``."""
    return f"{workers.get('world_size')} workers ({workers.get('min_workers')}–{workers.get('max_workers')})"


def node_draining(r: Record) -> str:
    nodes = ", ".join(str(n)[:12] for n in r.get("nodes") or [])
    ranks = ", ".join(str(n) for n in r.get("ranks") or [])
    return (
        f"node {nodes} is being drained (a preemption): rank(s) {ranks} restart elsewhere from the latest "
        "checkpoint at its deadline, without spending max_failures"
    )


# --- sweeps --------------------------------------------------------------------------------------


def trial_started(r: Record) -> str:
    return f"started  {values(r.get('params'))}"


def trial_finished(r: Record) -> str:
    return f"finished  {metrics(r.get('metrics'))}"


def trial_stopped(r: Record) -> str:
    return f"stopped early after {r.get('epochs')} epoch(s)"


# --- the driver: its MLflow outbox and its Ray ----------------------------------------------------


def tracking_unavailable(r: Record) -> str:
    return (
        f"WARNING MLflow unreachable at {r.get('uri')} ({r.get('error')}); training goes on, "
        f"{r.get('queued')} tracking operation(s) queued and retried with backoff"
    )


def tracking_recovered(r: Record) -> str:
    return f"MLflow reachable again after {r.get('down_s')} s; storing {r.get('queued')} queued operation(s)"


def tracking_dropped(r: Record) -> str:
    return f"WARNING MLflow refused a {r.get('operation')} operation for run {r.get('run')}: {r.get('error')}"


def tracking_flushing(r: Record) -> str:
    return f"waiting up to {r.get('timeout_s'):.0f} s for MLflow to store {r.get('queued')} queued operation(s)…"


def tracking_lost(r: Record) -> str:
    return f"WARNING MLflow at {r.get('uri')} still unreachable: {r.get('lost')} tracking operation(s) were not stored"


def notify_failed(r: Record) -> str:
    return (
        f"WARNING webhook {r.get('url')} was not told of {r.get('alert')} after {r.get('tries')} tries: "
        f"{r.get('error')} (the run goes on; check notify[].url)"
    )


def ray_runtime(r: Record) -> str | None:
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


#: The driver's own news, shown as a line of its own (no step): its MLflow outbox and its Ray.
DRIVER = MappingProxyType(
    {
        Event.TRACKING_UNAVAILABLE: tracking_unavailable,
        Event.TRACKING_RECOVERED: tracking_recovered,
        Event.TRACKING_DROPPED: tracking_dropped,
        Event.TRACKING_FLUSHING: tracking_flushing,
        Event.TRACKING_LOST: tracking_lost,
        Event.NOTIFY_FAILED: notify_failed,
        Event.RAY_RUNTIME: ray_runtime,
    }
)
