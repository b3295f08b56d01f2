"""The runner's hang guard: watches each running attempt's progress and ends the hung ones.

The limits are ``core.hang.Watch``'s; this part acts. An attempt past its limit is recorded as
hung at once (its failure is an infrastructure fault, retried under the step's ``retries``);
off the driver thread, the backend keeps its processes' stacks in its logs, the driver thread
is told (``step_hung``), and the backend ends the attempt, whose ``run_step`` then raises.
"""

from __future__ import annotations

import queue
import threading
import time
from types import MappingProxyType
from typing import Any, Callable, Mapping, Protocol

from raytrain_orch.core.events import Event, make
from raytrain_orch.core.hang import Watch
from raytrain_orch.core.plan import StepPlan
from raytrain_orch.core.policy import Failure
from raytrain_orch.store.state import RunState, Status


def _nothing(watch: Watch, now: float) -> None:
    """A record of a background thread's own clock (the usage sampler's): no sign of the step's."""


#: What each event of a running attempt tells its watch; any other is a sign of life (``alive``).
_SEEN: Mapping[str, Callable[[Watch, float], None]] = MappingProxyType(
    {
        Event.USAGE: _nothing,
        Event.EPOCH: Watch.progress,
        Event.HEARTBEAT: Watch.progress,
        # before the attempt's processes (re)start: waiting is no hang, nor is starting up
        Event.STEP_WAITING: Watch.restarted,
        Event.STEP_ADMITTED: Watch.restarted,
        Event.WORKERS_RESTARTING: Watch.restarted,
        # processes that started again: no epoch time to go by until they progress
        Event.WORKERS_RESIZED: Watch.resumed,
        Event.RESTORED: Watch.resumed,
        Event.STEP_PROCESS: Watch.code_started,
    }
)


class Ender(Protocol):
    """What the guard needs of the backend."""

    def keep_stacks(self, step: str, attempt: int) -> int: ...
    def end_attempt(self, step: str, attempt: int) -> None: ...


class HangGuard:
    def __init__(
        self, backend: Ender, notes: queue.SimpleQueue[dict[str, Any]], clock: Callable[[], float] = time.time
    ):
        """``clock``: every time the guard reads (a test's fake one moves time by hand)."""
        self._backend, self._notes, self._clock = backend, notes, clock
        self._watches: dict[str, Watch] = {}  # running attempts watched, by step
        self._hung: dict[tuple[str, int], Failure] = {}  # attempts found hung, until they settle

    def watch(self, step: StepPlan, attempt: int) -> None:
        """Watch an attempt that starts now (a step with ``hang_detection: false`` is not)."""
        if step.hang is not None:
            self._watches[step.name] = Watch(step.name, attempt, step.hang, last=self._clock())

    def saw(self, record: Mapping[str, Any]) -> None:
        """What an event of a running attempt tells its watch (the driver thread's)."""
        watch = self._watches.get(record.get("step", ""))
        if watch is not None:
            _SEEN.get(record["event"], Watch.alive)(watch, self._clock())

    def check(self, state: RunState) -> None:
        """End each watched attempt that made no progress past its limit."""
        now = self._clock()
        for name, watch in self._watches.items():
            key = (name, watch.attempt)
            if state.steps[name].status is not Status.RUNNING or key in self._hung:
                continue
            idle = watch.overdue(now)
            if idle is None:
                continue
            reason = watch.describe(idle)
            self._hung[key] = Failure(name, watch.attempt, "infra", "StepHung", reason)
            details = {"idle_s": round(idle, 1), "limit_s": round(watch.limit_s(), 1), "reason": reason}
            threading.Thread(
                target=self._end, args=(state.run_id, name, watch.attempt, details, now), name=f"rto-hung-{name}"
            ).start()

    def settled(self, step: str, attempt: int) -> Failure | None:
        """The attempt is over: stop watching it; its failure if it was found hung."""
        self._watches.pop(step, None)
        return self._hung.pop((step, attempt), None)

    def _end(self, run_id: str, step: str, attempt: int, details: dict[str, Any], detected: float) -> None:
        """Off the driver thread (capturing stacks takes seconds): keep the stacks, tell the driver
        thread, end the attempt — in that order, so the hang is recorded before its retry."""
        try:
            processes = self._backend.keep_stacks(step, attempt)
            stacks = f"rto logs {run_id} --step {step} --attempt {attempt}"
        except Exception as e:  # noqa: BLE001 — the attempt must end all the same
            processes, stacks = 0, f"not captured ({type(e).__name__}: {e})"
        self._notes.put(
            make(
                Event.STEP_HUNG,
                step=step,
                attempt=attempt,
                **details,
                stacks=stacks,
                processes=processes,
                detected_ts=round(detected, 3),
            )
        )
        self._backend.end_attempt(step, attempt)
