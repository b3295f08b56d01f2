"""A fully cached run's MLflow runs, written by a process of their own once its driver is done.

A run whose every step is cached computes nothing: loading MLflow and opening its store would be
most of its time. Its driver records the run (``state.json``, its events) and starts
``python -m raytrain_orch.tracking.catch_up RUN_ID STORAGE``, which builds the MLflow runs that
``RunTree`` builds for a cached run — the pipeline run and a cached run per step, with their
params, metrics and tags — from the run's record, then writes their ids into it. What MLflow
refuses, or an outage that outlasts the flush, is told in the run's events as a driver's would be.
"""

from __future__ import annotations

import sys
from typing import Any

from raytrain_orch.core import constants
from raytrain_orch.core.config import parse_config
from raytrain_orch.core.events import Event, make
from raytrain_orch.core.recorded_plan import replan
from raytrain_orch.core.text import gist
from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from raytrain_orch.tracking.outbox import Outbox
from raytrain_orch.tracking.run_tree import RunTree


def catch_up(run_id: str, storage: str) -> None:
    """Write run ``run_id``'s MLflow runs as its driver would have, and their ids into its record."""
    store = RunStore(Storage(storage))

    def note(event: str, **fields: Any) -> None:
        store.append_event(run_id, make(Event(event), **fields))

    try:
        state = store.load(run_id)
        config_path = store.run_path(run_id, constants.RESOLVED_CONFIG_FILE)
        config = parse_config(store.storage.read_bytes(*config_path).decode(), store.storage.uri(*config_path))
        pipeline, plan = replan(config, store.storage.read_json(*store.run_path(run_id, constants.PLAN_FILE)))
        outbox = Outbox(config.mlflow.tracking_uri, on_note=note)
        tree = RunTree(outbox, config, plan, pipeline.name, store)
        tree.begin(state)
        for step in plan.steps:
            s = state.steps[step.name]
            if s.status is Status.CACHED:
                tree.reused(state, step, s.attempts, s.metrics)
        tree.finish(state, state.status)
        lost = outbox.close(constants.TRACKING_FLUSH_TIMEOUT_S)
        if lost:
            note(Event.TRACKING_LOST, lost=lost, uri=outbox.tracking_uri)
        tree.keep_ids()
    except Exception as error:  # noqa: BLE001 — nobody waits for this process: the run's events say it
        note(Event.TRACKING_DROPPED, operation="catch_up", run=run_id, error=f"{type(error).__name__}: {gist(error)}")


if __name__ == "__main__":
    catch_up(*sys.argv[1:3])
