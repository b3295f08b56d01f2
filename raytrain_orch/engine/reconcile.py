"""Reconciliation: a run whose driver died without a word (SIGKILL, a lost machine) is recorded
RUNNING, and so are its MLflow runs. The next ``rto`` command that looks at it sees the driver
is gone and ends it KILLED — its record, its steps and every MLflow run still open — so no run
is left RUNNING. ``rto resume`` continues it as before.

The tracking store's side is a port (``EndTracking``): the composition root hands MLflow's.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterable

from raytrain_orch.core.events import Event, make
from raytrain_orch.store.state import RunState, RunStore, Status

#: End a run's tracking-store runs still open as KILLED and return their ids; raise when the
#: store cannot be reached (``cli.wiring.end_mlflow_runs``).
EndTracking = Callable[[RunState], list[str]]


def reconcile(
    store: RunStore, runs: Iterable[RunState], *, end_tracking: EndTracking, driver_ended: str | None = None
) -> list[RunState]:
    """End every run in ``runs`` whose driver is gone; return those it ended.

    ``driver_ended`` says how the caller knows the driver ended (e.g. its Ray job stopped), for a
    driver this host cannot see. MLflow first: if the store cannot be reached, the record stays
    as it is (shown INTERRUPTED) and the next command tries again.
    """
    ended = []
    for state in runs:
        if state.status is not Status.RUNNING or (driver_ended is None and state.driver_alive()):
            continue
        mlflow_runs: list[str] = []
        if state.mlflow.get("experiment_id"):
            try:
                mlflow_runs = end_tracking(state)
            except Exception as error:  # noqa: BLE001 — reported, and retried by the next command
                print(
                    f"rto: warning: run {state.run_id}: its driver is gone, but MLflow at "
                    f"{state.mlflow['tracking_uri']} "
                    f"could not be updated ({type(error).__name__}); the next rto command will retry",
                    file=sys.stderr,
                )
                continue
        now = time.time()
        driver = f"driver pid {state.driver.get('pid')} on {state.driver.get('host')}"
        state.status, state.ended_at = Status.KILLED, now
        state.error = f"its {driver} ended without finishing the run; `rto resume {state.run_id}` continues it"
        killed = []
        for name, step in state.steps.items():
            if step.status.active:
                step.status, step.ended_at, step.waiting = Status.KILLED, now, None
                killed.append(name)
        reason = f"{driver} is gone" + (f" ({driver_ended})" if driver_ended else "")
        store.append_event(
            state.run_id,
            make(
                Event.RUN_RECONCILED, status=Status.KILLED.value, reason=reason, steps=killed, mlflow_runs=mlflow_runs
            ),
        )
        store.save(state)  # after the event, which it makes durable first
        ended.append(state)
    return ended
