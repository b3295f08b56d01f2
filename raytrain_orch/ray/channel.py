"""The workers' progress channel to the driver: an actor on the driver's own node that holds the
events steps send (``StepContext.emit``) until the driver takes them.

The driver takes everything waiting in one round trip (``take``), however many events wait, so
its loop pays one call per wake-up rather than one per event. A sender's ``put_nowait`` returns
once the actor holds the event: an attempt's events are all there before its result is. A task
step sends through ``deferring()``, which does not wait for each event but ``flush``es before the
step's result goes back.

It also carries the driver's one request to a train step's workers: stop (a preemption). Every
rank asks at each report whether to stop (``stopping``, answered by the next report, so a report
never waits for it); the request fixes one report at which all ranks stop together, one no rank
has asked about yet (``request_stop``). Rank 0 then says which epoch the step's checkpoint holds
(``stopped``).
"""

from __future__ import annotations

from typing import Any, cast

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raytrain_orch.ray import warm


class _ProgressChannel:
    """The actor: the events sent and not yet taken, in the order they came."""

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._asked: dict[str, int] = {}  # per attempt ("STEP/ATTEMPT"): the latest report any rank asked about
        self._stop_at: dict[str, int] = {}  # per attempt: the report at which every rank stops
        self._stopped: dict[str, dict[str, Any]] = {}  # per attempt: what rank 0 said as it stopped

    def put(self, record: dict[str, Any]) -> None:
        self._events.append(record)

    def take(self) -> list[dict[str, Any]]:
        taken, self._events = self._events, []
        return taken

    def request_stop(self, attempt: str) -> int:
        """Stop ``attempt``'s workers at a report none of them asked about yet: each rank learns
        of it one report after asking (its ask at report i is answered at report i + 1)."""
        if attempt not in self._stop_at:
            self._stop_at[attempt] = self._asked.get(attempt, -1) + 2
        return self._stop_at[attempt]

    def stopping(self, attempt: str, report: int) -> int | None:
        """A rank's ask at its ``report``-th report: the report at which to stop, once requested."""
        self._asked[attempt] = max(report, self._asked.get(attempt, -1))
        return self._stop_at.get(attempt)

    def stop_requested(self, attempt: str) -> bool:
        return attempt in self._stop_at

    def stopped(self, attempt: str, epoch: int | None) -> None:
        self._stopped[attempt] = {"epoch": epoch}

    def outcome(self, attempt: str) -> dict[str, Any] | None:
        """What rank 0 said as ``attempt`` stopped on request (None: it did not)."""
        return self._stopped.get(attempt)


class EventChannel:
    """A handle on the channel, which pickles: the driver keeps one, each step's context another."""

    def __init__(self, actor: ray.actor.ActorHandle, node_id: str):
        self.actor, self.node_id = actor, node_id

    @classmethod
    def create(cls) -> EventChannel:
        """A channel on this driver's node (``node_id``), so losing any other node never loses it
        (nor the driver with it), restarted in place if its process dies (the events it held are lost)."""
        here = ray.get_runtime_context().get_node_id()
        pinned = NodeAffinitySchedulingStrategy(here, soft=False)
        quiet = {"env_vars": {warm.PRELOAD_VAR: ""}}  # it imports nothing of the pipeline's: that would slow the start
        holder = ray.remote(_ProgressChannel).options(
            num_cpus=0, scheduling_strategy=pinned, max_restarts=-1, runtime_env=quiet
        )
        return cls(cast(ray.actor.ActorHandle, holder.remote()), here)

    def put_nowait(self, record: dict[str, Any]) -> None:
        """Send an event; returns once the channel holds it."""
        ray.get(self.actor.put.remote(record))

    def deferring(self) -> DeferringChannel:
        """A handle whose ``put_nowait`` does not wait (``DeferringChannel``)."""
        return DeferringChannel(self.actor, self.node_id)

    def take(self) -> list[dict[str, Any]]:
        """Every event waiting, oldest first (raises Ray's actor errors when the channel is down)."""
        return ray.get(self.actor.take.remote())

    def shutdown(self) -> None:
        ray.kill(self.actor, no_restart=True)

    def request_stop(self, attempt: str) -> None:
        """Ask ``attempt``'s ("STEP/ATTEMPT") train workers to checkpoint and stop together."""
        ray.get(self.actor.request_stop.remote(attempt))

    def outcome(self, attempt: str) -> dict[str, Any] | None:
        return ray.get(self.actor.outcome.remote(attempt))


class DeferringChannel(EventChannel):
    """A task step's handle: ``put_nowait`` does not wait for the channel; ``flush`` waits until it
    holds everything sent so far (Ray runs one caller's calls to an actor in order). It pickles as
    a plain handle, so a Ray task the step starts itself waits for each event as usual."""

    def __init__(self, actor: ray.actor.ActorHandle, node_id: str):
        super().__init__(actor, node_id)
        self._last: ray.ObjectRef | None = None

    def put_nowait(self, record: dict[str, Any]) -> None:
        self._last = self.actor.put.remote(record)

    def flush(self) -> None:
        last, self._last = self._last, None
        if last is not None:
            try:
                ray.get(last)
            except ray.exceptions.RayActorError:  # the channel is gone: progress is best effort
                pass

    def __reduce__(self) -> tuple[Any, ...]:
        return (EventChannel, (self.actor, self.node_id))
