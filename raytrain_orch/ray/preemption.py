"""A preemption in the driver: a train step attempt's lease was preempted by the admission queue,
so its workers are asked to checkpoint and stop (``Stop.request``), and once ``fit`` returns the
attempt ends as a ``StepPreempted`` rather than with an artifact (``Stop.outcome``).

The workers stop together at a report (``ray/channel.py``, ``TrainContext.report``). One that
does not reach a report within ``RTO_PREEMPTION_GRACE_S`` is stopped without a new checkpoint
(its Ray Train run aborted): it resumes from its previous one.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import Any, Callable

from raytrain_orch.core import constants, sentences
from raytrain_orch.core.errors import StepPreempted
from raytrain_orch.core.events import Event, make
from raytrain_orch.ray.channel import EventChannel


class Stop:
    """One preemptible train step attempt's stop request, from the lease's renewal thread to its
    workers, and back as the attempt's outcome."""

    def __init__(
        self, channel: EventChannel, step: str, attempt: int, notes: queue.SimpleQueue[dict[str, Any]]
    ) -> None:
        self._channel, self._step, self._attempt, self._notes = channel, step, attempt, notes
        self.preempted: dict[str, Any] | None = None
        self.abort: Callable[[], None] | None = None  # ends the attempt when it does not stop in time
        self._forced = threading.Event()
        self._timer: threading.Timer | None = None

    @property
    def key(self) -> str:
        return f"{self._step}/{self._attempt}"

    def request(self, preempted: dict[str, Any]) -> None:
        """The queue preempted the attempt's lease: ask its workers to checkpoint and stop."""
        self.preempted = {  # the admission queue's ``preempted_by``, as the events name it
            "by": preempted.get("label", "?"),
            "priority": preempted.get("priority", 0),
            "queue": preempted.get("queue", "default"),
            "keep": preempted.get("keep", 0),
        }
        where = {"step": self._step, "attempt": self._attempt}
        self._notes.put(make(Event.STEP_PREEMPTING, **where, **self.preempted, ts=time.time()))
        with contextlib.suppress(Exception):  # the channel is gone: the grace period ends it
            self._channel.request_stop(self.key)
        self._timer = threading.Timer(constants.PREEMPTION_GRACE_S, self._force)
        self._timer.daemon = True
        self._timer.start()

    def _force(self) -> None:
        self._forced.set()
        if self.abort is not None:
            self.abort()

    def outcome(self) -> StepPreempted | None:
        """After ``fit``: the preemption the attempt ended with, or None when it was not asked to
        stop, or finished its last epoch before it reached the report it was to stop at."""
        if self._timer is not None:
            self._timer.cancel()
        if self.preempted is None:
            return None
        said = None
        with contextlib.suppress(Exception):
            said = self._channel.outcome(self.key)
        if said is None and not self._forced.is_set():
            return None
        epoch = said.get("epoch") if said else None
        record = {**self.preempted, "epoch": epoch}
        return StepPreempted(f"{self._step}: {sentences.step_preempted(record)}", self.preempted, epoch)
