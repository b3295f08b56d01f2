"""What a run's webhooks (``notify:``) are told, decided from its events, and the message that tells it.

``Alerts`` is fed every recorded event of a run, in order (``consume``), and the time now and
then (``tick``); each returns the ``Delivery`` values due: an ``Alert`` and the hook it goes to.
``engine.notify`` sends them; ``message`` is the body it POSTs. Pure: no I/O, no clock of its own.

The rules, one alert kind each (a hook is told only the kinds its ``on`` lists):
- ``failed``: the run finished FAILED; the cause names the failed steps and their errors.
- ``finished``: the run finished otherwise (SUCCEEDED, KILLED).
- ``recovered``: a step attempt succeeded after an earlier attempt of it failed (``step_retrying``)
  or its workers restarted after a fault (``workers_restarting``), within this run.
- ``hung``: a step was found hung (``step_hung``).
- ``preempted``: a step's attempt ended as a preemption (``step_preempted``).
- ``waiting``: a step has waited for its gang longer than the hook's ``waiting_after_s``; told
  once per step attempt and hook. Only a clock can say so: ``tick``.

Every step-level fact is read from ``RunView`` (the one reducer of events), never parsed here.
A webhook's URL is never part of an alert or a message (a delivery names its hook by position).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from raytrain_orch.core import sentences
from raytrain_orch.core.config import Alert as Kind
from raytrain_orch.core.config import NotifyConfig
from raytrain_orch.core.events import Consumer
from raytrain_orch.core.links import mlflow_url, status_command
from raytrain_orch.core.run_view import RunView, StepView
from raytrain_orch.core.text import duration, gist

Record = Mapping[str, Any]

#: ``workers_restarting`` phases that follow a fault; RESIZING is an elastic group growing into capacity.
_FAULT_PHASES = frozenset({"RESTARTING", "RESCHEDULING"})


@dataclass(frozen=True)
class Alert:
    """One thing to tell: what happened (``kind``), to which run and step, and why, in one line."""

    kind: Kind
    run_id: str
    step: str | None
    cause: str  # one line
    ts: float  # when it happened (the record's time; ``tick``'s for waiting)
    status: str | None = None  # the run's, for failed and finished
    pipeline: str = ""  # the config's name
    experiment_id: str | None = None  # MLflow's, when the run's start knew them
    mlflow_run_id: str | None = None


@dataclass(frozen=True)
class Delivery:
    """An alert for one hook: its position in ``notify:`` (never its URL, which is a secret)."""

    hook: int
    alert: Alert


class Alerts(Consumer):
    """The alerts a run's events call for, by the rules above."""

    def __init__(self, hooks: Sequence[NotifyConfig], pipeline: str = ""):
        """``hooks``: the config's ``notify``; ``pipeline``: the config's name, shown in every alert."""
        self.hooks, self.pipeline = tuple(hooks), pipeline
        self.view = RunView()
        self._mlflow: tuple[str | None, str | None] = (None, None)  # experiment id, pipeline run id
        self._troubles: dict[str, str] = {}  # step → the first error since its last success
        self._failures: dict[str, str] = {}  # step → the one line of its failure
        self._waited: set[tuple[int, str, int]] = set()  # (hook, step, attempt) told of its wait

    def consume(self, record: Record) -> list[Delivery]:
        """The deliveries ``record`` calls for (most call for none)."""
        self.view.consume(record)
        return self._route(super().consume(record))

    def tick(self, now: float) -> list[Delivery]:
        """The ``waiting`` deliveries due at ``now``: each step waiting for its gang past a hook's
        ``waiting_after_s``, once per attempt and hook."""
        if self.view.status != "running":
            return []
        due = []
        for s in self.view.steps.values():
            if s.state != "waiting" or s.waiting_since is None:
                continue
            for index, hook in enumerate(self.hooks):
                key = (index, s.name, s.attempt)
                if "waiting" in hook.on and now - s.waiting_since >= hook.waiting_after_s and key not in self._waited:
                    self._waited.add(key)
                    due.append(Delivery(index, self._waiting(s, now)))
        return due

    # --- the rules ----------------------------------------------------------------------------
    def on_run_started(self, r: Record) -> None:
        self._mlflow = (r.get("experiment_id"), r.get("mlflow_run_id"))

    def on_run_finished(self, r: Record) -> Alert:
        status = str(r.get("status", ""))
        if status == "FAILED":
            failures = "; ".join(f"{step} failed: {error}" for step, error in self._failures.items())
            return self._alert("failed", r, failures or "the run failed", next(iter(self._failures), None), status)
        cause = f"run {status} after {duration(r.get('duration_s'))}"
        killed = [s.name for s in self.view.steps.values() if s.state == "killed"]
        return self._alert("finished", r, cause + (f"; killed: {', '.join(killed)}" if killed else ""), None, status)

    def on_step_retrying(self, r: Record) -> None:
        self._troubles.setdefault(r["step"], gist(r.get("error")))

    def on_workers_restarting(self, r: Record) -> None:
        if not r.get("trial") and r.get("phase") in _FAULT_PHASES:
            self._troubles.setdefault(r["step"], gist(r.get("reason")))

    def on_step_succeeded(self, r: Record) -> Alert | None:
        first = self._troubles.pop(r["step"], None)
        if first is None:
            return None
        cause = f"{r['step']} succeeded at attempt {r.get('attempt', 1)} after: {first}"
        return self._alert("recovered", r, cause, r["step"])

    def on_step_failed(self, r: Record) -> None:
        self._troubles.pop(r["step"], None)
        self._failures[r["step"]] = gist(r.get("error"))

    def on_step_hung(self, r: Record) -> Alert:
        cause = f"{r['step']} hung at attempt {r.get('attempt', 1)}: {gist(r.get('reason'))}"
        return self._alert("hung", r, cause, r["step"])

    def on_step_preempted(self, r: Record) -> Alert:
        return self._alert("preempted", r, f"{r['step']} {sentences.step_preempted(r)}", r["step"])

    def _waiting(self, s: StepView, now: float) -> Alert:
        waited = duration(now - (s.waiting_since or now))
        cause = f"{s.name} has waited {waited} for its gang at attempt {s.attempt}"
        cause += f": {s.detail}" if s.detail else ""
        return self._alert("waiting", {"ts": now}, cause, s.name)

    # --- the alert, and who is told -----------------------------------------------------------
    def _alert(self, kind: Kind, r: Record, cause: str, step: str | None, status: str | None = None) -> Alert:
        experiment_id, mlflow_run_id = self._mlflow
        return Alert(
            kind,
            run_id=str(r.get("run_id") or self.view.run_id),
            step=step,
            cause=gist(cause),
            ts=float(r.get("ts") or 0.0),
            status=status,
            pipeline=self.pipeline,
            experiment_id=experiment_id,
            mlflow_run_id=mlflow_run_id,
        )

    def _route(self, alert: Alert | None) -> list[Delivery]:
        if alert is None:
            return []
        return [Delivery(index, alert) for index, hook in enumerate(self.hooks) if alert.kind in hook.on]


# --- the message ---------------------------------------------------------------------------------


def _unknown(run_id: str) -> Mapping[str, Any]:
    return {}


@dataclass(frozen=True)
class Links:
    """Where a message points: the run's storage root (for ``rto status``) and its MLflow page.

    ``mlflow_ids(run_id)`` gives the run's MLflow ids as its record knows them now
    (``experiment_id``, ``run_id``): the pipeline's MLflow run is created off the run's path,
    often after the run started, so an alert's own ids (its start's) may be None.
    """

    storage: str
    tracking_uri: str | None = None
    mlflow_ids: Callable[[str], Mapping[str, Any]] = _unknown

    def mlflow_url(self, alert: Alert) -> str | None:
        experiment_id, run_id = alert.experiment_id, alert.mlflow_run_id
        if not (experiment_id and run_id):
            known = self.mlflow_ids(alert.run_id)
            experiment_id, run_id = known.get("experiment_id"), known.get("run_id")
        return mlflow_url(self.tracking_uri, experiment_id, run_id)


def message(alert: Alert, links: Links) -> dict[str, Any]:
    """The JSON body of ``alert``: Slack's ``text`` (one line: the run, the cause naming its step,
    the links), and the same as fields at the top level for any other receiver."""
    command, page = status_command(alert.run_id, links.storage), links.mlflow_url(alert)
    where = f"{alert.pipeline} run {alert.run_id}" if alert.pipeline else f"run {alert.run_id}"
    text = f"[rto] {alert.kind}: {where}: {alert.cause} · `{command}`" + (f" · MLflow: {page}" if page else "")
    return {
        "text": text,
        "alert": alert.kind,
        "run_id": alert.run_id,
        "pipeline": alert.pipeline,
        "step": alert.step,
        "cause": alert.cause,
        "status": alert.status,
        "ts": alert.ts,
        "status_command": command,
        "mlflow_url": page,
    }
