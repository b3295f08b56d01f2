"""Hang detection: when a running step attempt has made no progress for too long.

Pure: the runner feeds a ``Watch`` the attempt's progress (a train step's epoch reports, a task
step's ``ctx.heartbeat()``, any event its workers send) and asks it, as it polls, whether the
attempt is overdue. The limit is the step's ``hang_timeout_s`` when set; otherwise a multiple of
the step's own median epoch (or heartbeat) interval, never under a floor, and a generous startup
limit until there is an interval to go by — before the first progress, and again after Ray Train
restarts the workers (a restart is a start, not an epoch).
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from raytrain_orch.core.plan import HangLimit

WINDOW = 101


@dataclass
class Watch:
    step: str
    attempt: int
    limit: HangLimit
    last: float  # when the attempt last showed progress (or was admitted)
    #: Seconds per epoch or per heartbeat, the latest ``WINDOW`` (a long run's pace is its recent one).
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    starting: bool = True  # no interval since the (re)start to go by yet
    running: bool = False  # the step's code runs (its process started); before, the startup limit

    def progress(self, now: float) -> None:
        """The attempt showed progress (an epoch, a heartbeat) at ``now``: the time since the
        previous one is a sample of its pace, unless it is the first since a (re)start."""
        if not self.starting and now > self.last:
            self.samples.append(now - self.last)
        self.last, self.starting = now, False

    def alive(self, now: float) -> None:
        """A sign of life that is not a unit of work (a metric logged mid-epoch): the clock starts
        again, no interval is sampled."""
        self.last = now

    def restarted(self, now: float) -> None:
        """The workers are starting again: the startup limit applies until they progress."""
        self.last, self.starting, self.running = now, True, False

    def resumed(self, now: float) -> None:
        """The workers restored their checkpoint, or the group started with a new size: no epoch
        time to go by until they progress."""
        self.last, self.starting = now, True

    def code_started(self, now: float) -> None:
        """A process of the step began running its code: a set ``hang_timeout_s`` counts from here
        (a worker that is still starting, importing, is no hang)."""
        if not self.running:
            self.last, self.running = now, True

    def limit_s(self) -> float:
        policy = self.limit.policy
        if self.limit.timeout_s is not None:
            return self.limit.timeout_s if self.running else max(policy.startup_s, self.limit.timeout_s)
        if self.starting or not self.samples:
            return policy.startup_s
        return max(policy.floor_s, policy.multiple * statistics.median(self.samples))

    def overdue(self, now: float) -> float | None:
        """Seconds without progress when past the limit, else None."""
        idle = now - self.last
        return idle if idle > self.limit_s() else None

    def describe(self, idle_s: float) -> str:
        limit = self.limit_s()
        if self.limit.timeout_s is not None and self.running:
            how = "hang_timeout_s"
        elif self.starting or not self.samples:
            how = "hang.startup_s: no progress yet since the workers started"
        else:
            median = statistics.median(self.samples)
            policy = self.limit.policy
            how = f"{policy.multiple:g} × its median interval {median:.1f} s, floor {policy.floor_s:g} s"
        return f"no progress for {idle_s:.0f} s (limit {limit:.0f} s: {how})"
