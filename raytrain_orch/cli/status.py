"""What ``rto status`` shows, derived from a run's durable record (``state.json``) and its
``events.jsonl`` — never from a driver's memory, so it works while the run goes on, after it
ended, and after its driver died."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from raytrain_orch.core.events import Event
from raytrain_orch.store.state import RunState, Status
from raytrain_orch.store.storage import Storage

#: Where ``rto ui`` serves a local MLflow store unless told otherwise.
LOCAL_UI = "http://127.0.0.1:5000"


def mlflow_url(tracking_uri: str | None, experiment_id: str | None, run_id: str | None) -> str | None:
    """The MLflow UI page of a run: on the tracking server itself, or where ``rto ui`` serves a
    local store by default."""
    if not (tracking_uri and experiment_id and run_id):
        return None
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def describe(state: RunState, events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The run record, each step extended with what a user asks of it: whether it was a cache
    hit, its artifact's URI, its MLflow page, how far its training got, when it last changed."""
    data = state.to_dict()
    data["status"] = state.shown_status
    experiment, tracking_uri = state.mlflow.get("experiment_id"), state.mlflow.get("tracking_uri")
    data["mlflow_url"] = mlflow_url(tracking_uri, experiment, state.mlflow.get("run_id"))
    steps: dict[str, Any] = {}
    for name, s in state.steps.items():
        mine = [e for e in events if e.get("step") == name and not e.get("trial")]
        latest = [e for e in mine if e.get("attempt") == s.attempts]
        started: dict[str, Any] = next((e for e in reversed(latest) if e["event"] == Event.STEP_STARTED), {})
        epochs = [e for e in latest if e["event"] == Event.EPOCH and e.get("epoch") is not None]
        sized = [e for e in latest if e["event"] == Event.WORKERS_RESIZED]
        steps[name] = {
            **data["steps"][name],
            "cache_hit": s.status is Status.CACHED,
            "artifact_uri": Storage(s.artifact["storage_uri"]).uri(*s.artifact["path"]) if s.artifact else None,
            "mlflow_url": mlflow_url(tracking_uri, experiment, s.mlflow_run_id),
            "epoch": epochs[-1]["epoch"] + 1 if epochs else None,
            "total_epochs": started.get("total_epochs"),
            "max_attempts": started.get("max_attempts"),
            # An elastic step's worker group as it is now (or last was): size, and its range.
            "workers": (
                {k: sized[-1][k] for k in ("world_size", "min_workers", "max_workers")}
                if sized and sized[-1]["min_workers"] != sized[-1]["max_workers"]
                else None
            ),
            "hung": [
                {k: e.get(k) for k in ("attempt", "reason", "stacks")} for e in mine if e["event"] == Event.STEP_HUNG
            ],
            "last_event": mine[-1]["event"] if mine else None,
            "last_event_at": mine[-1]["ts"] if mine else None,
        }
    data["steps"] = steps
    warnings = [
        e
        for e in events
        if e["event"]
        in (Event.TRACKING_UNAVAILABLE, Event.TRACKING_RECOVERED, Event.TRACKING_DROPPED, Event.RUN_RECONCILED)
    ]
    data["notes"] = warnings[-5:]
    return data
