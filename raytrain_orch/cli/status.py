"""What ``rto status`` shows, derived from a run's durable record (``state.json``) and its
``events.jsonl`` — never from a driver's memory, so it works while the run goes on, after it
ended, and after its driver died."""

from __future__ import annotations

from typing import Any

from raytrain_orch.core.links import mlflow_url
from raytrain_orch.core.run_view import RunView
from raytrain_orch.store.state import RunState, Status
from raytrain_orch.store.storage import Storage


def describe(state: RunState, view: RunView) -> dict[str, Any]:
    """The run record, each step extended with what a user asks of it: whether it was a cache
    hit, its artifact's URI, its MLflow page, how far its training got, when it last changed
    (``view``: the run's events, reduced)."""
    data = state.to_dict()
    data["status"] = state.shown_status
    experiment, tracking_uri = state.mlflow.get("experiment_id"), state.mlflow.get("tracking_uri")
    data["mlflow_url"] = mlflow_url(tracking_uri, experiment, state.mlflow.get("run_id"))
    steps: dict[str, Any] = {}
    for name, s in _in_order(state):
        shown = view.step(name)
        steps[name] = {
            **data["steps"][name],
            "cache_hit": s.status is Status.CACHED,
            "artifact_uri": Storage(s.artifact["storage_uri"]).uri(*s.artifact["path"]) if s.artifact else None,
            "mlflow_url": mlflow_url(tracking_uri, experiment, s.mlflow_run_id),
            "epoch": shown.reported,
            "total_epochs": shown.total_epochs,
            "max_attempts": shown.max_attempts,
            "workers": shown.workers,  # an elastic step's worker group as it is now (or last was)
            "hung": shown.hung,
            "last_event": shown.last_event,
            "last_event_at": shown.last_event_at,
            "displaced": shown.displaced,  # the gangs (RUN/STEP) preempted to admit it
            "skipped": shown.detail if s.status is Status.SKIPPED else None,  # why, when it was skipped
            "item_progress": shown.item_counts() if s.items is not None else None,  # a mapped step: 3/8 items done
        }
    data["steps"] = steps
    data["notes"] = list(view.notes)
    return data


def _in_order(state: RunState) -> list[tuple[str, Any]]:
    """The run's steps, each mapped step's items right after it."""
    units: dict[str, list[tuple[str, Any]]] = {}
    for name, s in state.steps.items():
        if s.parent is not None:
            units.setdefault(s.parent, []).append((name, s))
    ordered = []
    for name, s in state.steps.items():
        if s.parent is None:
            ordered += [(name, s), *sorted(units.get(name, []), key=lambda unit: unit[1].item_index or 0)]
    return ordered
