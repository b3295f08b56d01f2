"""The cluster's admission queue on Ray: the actor that hosts it, and the lease client.

Every step attempt runs under a lease of the admission queue (``Leases.admitted``), which grants its
whole gang or makes it wait; nothing of the cluster is held while waiting. Under the lease:

- a task step reserves its gang as one placement group (``gangs.reserved``), all or nothing,
  runs its Ray task in it, and removes the group when the step ends however it ends;
- a train step lets ``TorchTrainer`` place its workers' own placement group. The lease covers
  exactly that group: the workers' bundles and strategy are the gang, and Ray Train's
  controller actor asks for no resources (``num_cpus=0``). Worker-group restarts after a
  failure happen inside the same lease, so a recovering step never re-queues.

The queue is one named, detached actor per cluster (``Admission``), on the head node, so every
driver on a cluster — ``rto run --address``, submitted jobs, sweep trials — shares it. Its logic
is the pure ``core.admission.AdmissionQueue``; this module only hosts it and talks to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterator, cast

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raytrain_orch.core import constants
from raytrain_orch.core.admission import AdmissionQueue
from raytrain_orch.core.errors import AdmissionTimeoutError, CapacityLostError
from raytrain_orch.core.placement import ClusterSpec, GangSpec
from raytrain_orch.ray.session import cluster_spec, head_node_id

log = logging.getLogger(__name__)

# --- the admission queue ------------------------------------------------------------------------

ADMISSION_ACTOR = "rto-admission-v3"  # bump the suffix when the actor's methods change
ADMISSION_NAMESPACE = "raytrain_orch"
_CLUSTER_REFRESH_S = 1.0


class AdmissionActor:
    """The cluster's admission queue, hosted in an async actor so callers can long-poll.
    A plain class; ``Admission`` below is the one place it becomes an actor."""

    def __init__(self) -> None:
        self._queue = AdmissionQueue()
        self._events: dict[str, asyncio.Event] = {}
        self._cluster, self._cluster_at = ClusterSpec(), 0.0
        self._ticker: asyncio.Task | None = None

    async def wait(
        self, ticket: str, bundles: list[dict], strategy: str, label: str, priority: int, ttl_s: float, timeout_s: float
    ) -> dict:
        """Enqueue (or keep alive) ``ticket`` and wait up to ``timeout_s`` for a verdict."""
        self._start_ticker()
        self._queue.submit(
            ticket, GangSpec(tuple(bundles), strategy), label=label, priority=priority, ttl_s=ttl_s, now=time.time()
        )
        self._reschedule()
        if self._verdict(ticket)["state"] == "waiting":
            event = self._events.setdefault(ticket, asyncio.Event())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), timeout_s)
        return self._verdict(ticket)

    async def touch(self, tickets: list[str]) -> list[str]:
        return self._queue.touch(tickets, time.time())

    async def reclaim(
        self, ticket: str, bundles: list[dict], strategy: str, label: str, priority: int, ttl_s: float
    ) -> None:
        self._queue.reclaim(
            ticket, GangSpec(tuple(bundles), strategy), label=label, priority=priority, ttl_s=ttl_s, now=time.time()
        )
        self._reschedule()

    async def resize(self, ticket: str, bundles: list[dict], strategy: str) -> bool:
        resized = self._queue.resize(ticket, GangSpec(tuple(bundles), strategy))
        self._reschedule()
        return resized

    async def release(self, ticket: str) -> bool:
        released = self._queue.release(ticket)
        self._events.pop(ticket, None)
        self._reschedule()
        return released

    async def release_run(self, run_id: str) -> int:
        for request in (gone := self._queue.release_run(run_id)):
            self._events.pop(request.ticket, None)
        self._reschedule()
        return len(gone)

    async def snapshot(self) -> dict:
        return {
            **self._queue.snapshot(self._cluster_spec(), time.time()),
            "cluster": [dict(n) for n in self._cluster_spec().nodes],
        }

    def _verdict(self, ticket: str) -> dict:
        verdict = self._queue.verdict(ticket, self._cluster)
        return {
            "state": verdict.state,
            "position": verdict.position,
            "reason": verdict.reason,
            "lacking": verdict.lacking,
        }

    def _reschedule(self) -> None:
        now = time.time()
        for gone in self._queue.expire(now):
            log.warning("admission: dropped %s (%s): its driver stopped renewing it", gone.label, gone.gang.describe())
            self._events.pop(gone.ticket, None)
        waiting = {r.ticket for r in self._queue.waiting()}
        self._queue.schedule(self._cluster_spec(), now)
        for ticket in waiting - {r.ticket for r in self._queue.waiting()}:  # granted
            if ticket in self._events:
                self._events.pop(ticket).set()

    def _cluster_spec(self) -> ClusterSpec:
        if time.time() - self._cluster_at > _CLUSTER_REFRESH_S:
            self._cluster, self._cluster_at = cluster_spec(), time.time()
        return self._cluster

    def _start_ticker(self) -> None:
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        """Expire dead holders and notice grown clusters even when nobody calls."""
        while True:
            await asyncio.sleep(_CLUSTER_REFRESH_S)
            self._reschedule()


#: The actor class (asks for no resources: it only keeps books).
Admission = ray.remote(num_cpus=0)(AdmissionActor)


def admission(head: str | None = None) -> ray.actor.ActorHandle:
    """The cluster's admission actor, created by whichever driver or worker asks first (``head``:
    the head node's id, when the caller knows it).

    On the head node, which lives as long as the cluster: a queue on a worker node would die with
    that node and restart empty, forgetting every lease. Never inside the caller's placement
    group either (node affinity is a strategy of its own): a caller running in a gang that
    captures its children (a task step, a sweep trial) would otherwise place the queue in that
    gang, and the queue would die with it when the gang is removed. Should its process die, Ray
    restarts it on the head and the holders' renewals tell it their leases again (``_renew``).
    """
    handle = Admission.options(
        name=ADMISSION_ACTOR,
        namespace=ADMISSION_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(head or head_node_id(), soft=False),
    ).remote()
    return cast(ray.actor.ActorHandle, handle)


@dataclass
class _Lease:
    """A lease this client holds or waits for: the queue it asked, and what ends its renewals."""

    handle: ray.actor.ActorHandle
    stop: threading.Event = field(default_factory=threading.Event)


class Leases:
    """A driver's (or a sweep trial's) leases from the cluster's admission queue: each lease it
    holds or waits for, renewed by a thread of its own while held. ``close`` releases what is
    still held (a driver stopping early). Made for one Ray session: it keeps the head's id."""

    def __init__(self) -> None:
        self._held: dict[str, _Lease] = {}
        self._lock = threading.Lock()
        self._head: str | None = None

    def queue(self) -> ray.actor.ActorHandle:
        """The cluster's admission actor (``admission``), its head node looked up once."""
        if self._head is None:
            self._head = head_node_id()
        return admission(self._head)

    @contextlib.contextmanager
    def admitted(
        self,
        gang: GangSpec,
        label: str,
        *,
        priority: int = 0,
        timeout_s: float | None = None,
        on_wait: Callable[[str, int], None] | None = None,
        ttl_s: float | None = None,
        ticket: str | None = None,
    ) -> Iterator[float]:
        """Hold a lease on ``gang`` from the cluster's admission queue; yield the seconds waited.

        Waits in the queue (reporting each change of position through ``on_wait``) until the whole
        gang fits, and raises ``AdmissionTimeoutError`` after ``timeout_s``. A gang the cluster can
        no longer hold at all (it lost nodes) waits for them to join at most ``timeout_s`` or, when
        that is None, ``RTO_CAPACITY_WAIT_S``. The lease is renewed while held and released on exit,
        however the block ends. A caller-chosen ``ticket`` lets another process ``release`` the
        lease (a process that is killed cannot).
        """
        ticket = ticket or f"{label}/{uuid.uuid4().hex[:8]}"
        lease = _Lease(self.queue())
        with self._lock:
            self._held[ticket] = lease
        try:
            request = (ticket, [dict(b) for b in gang.bundles], gang.strategy, label, priority)
            ttl = ttl_s or constants.LEASE_TTL_S
            waited_s = _wait(lease.handle, gang, (*request, ttl), timeout_s, on_wait)
            threading.Thread(
                target=self._renew, args=(lease, (*request, ttl)), name=f"rto-lease-{label}", daemon=True
            ).start()
            yield waited_s
        finally:
            lease.stop.set()
            with self._lock:
                self._held.pop(ticket, None)
            try:
                ray.get(lease.handle.release.remote(ticket), timeout=10)
            except ray.exceptions.RayActorError:
                release(ticket)  # the queue was replaced meanwhile: release it there
            except Exception:  # noqa: BLE001 — the cluster may be gone; the lease then expires
                pass

    def _renew(self, lease: _Lease, request: tuple) -> None:
        """Keep a granted lease alive; book it again if the queue restarted (or was replaced) and
        forgot it."""
        ticket, ttl_s = request[0], request[-1]
        while not lease.stop.wait(ttl_s / 6):
            try:
                if ray.get(lease.handle.touch.remote([ticket]), timeout=ttl_s / 2) and not lease.stop.is_set():
                    lease.handle.reclaim.remote(*request)
            except (ray.exceptions.GetTimeoutError, ray.exceptions.ActorUnavailableError):
                continue  # busy or restarting: the next renewal finds it back, empty, and books the lease again
            except ray.exceptions.RayActorError:
                with contextlib.suppress(Exception):  # gone for good (killed by hand): the queue made anew
                    lease.handle = self.queue()
            except Exception:  # noqa: BLE001 — Ray is shutting down
                return

    def close(self) -> None:
        """Release every lease and queue place this client holds (a driver stopping early)."""
        with self._lock:
            held = list(self._held.items())
            self._held.clear()
        # First end the renewals: one that found its lease released would book it again.
        for _, lease in held:
            lease.stop.set()
        refs = []
        for ticket, lease in held:
            with contextlib.suppress(Exception):
                refs.append(lease.handle.release.remote(ticket))
        # Until the queue has them (it returns as soon as it does): a driver that exits the moment this
        # returns must not take a release not yet delivered along, leaving the lease to its TTL.
        with contextlib.suppress(Exception):
            ray.wait(refs, num_returns=len(refs), timeout=constants.LEASE_RELEASE_WAIT_S)


def _wait(
    handle: ray.actor.ActorHandle,
    gang: GangSpec,
    request: tuple,
    timeout_s: float | None,
    on_wait: Callable[[str, int], None] | None,
) -> float:
    """Wait in the queue until ``request`` (its ``wait`` arguments but the poll) is granted;
    return the seconds waited (see ``Leases.admitted``)."""
    label = request[3]
    started, last, lacking_since = time.monotonic(), None, None
    limit = timeout_s if timeout_s is not None else constants.CAPACITY_WAIT_S
    while True:
        # The first call answers at once, so a waiting step says so without delay.
        poll = 0.0 if last is None else constants.ADMISSION_POLL_S
        if timeout_s is not None:
            poll = max(0.0, min(poll, timeout_s - (time.monotonic() - started)))
        verdict = ray.get(handle.wait.remote(*request, poll))
        if verdict["state"] == "granted":
            return time.monotonic() - started
        now = time.monotonic()
        lacking_since = (lacking_since or now) if verdict.get("lacking") else None
        timed_out = timeout_s is not None and now - started >= timeout_s
        if lacking_since is not None and (timed_out or now - lacking_since >= limit):  # the more telling of the two
            raise CapacityLostError(
                f"{verdict['reason'].removeprefix('waiting for nodes: ')}; no node joined within {limit:g} s "
                f"({'admission.timeout_s' if timeout_s is not None else 'RTO_CAPACITY_WAIT_S'}) — "
                f"add nodes that can hold it, then `rto resume {label.split('/')[0]}`"
            )
        if timed_out:
            raise AdmissionTimeoutError(
                f"{label}: waited {timeout_s:g} s for {gang.describe()} (admission.timeout_s) — "
                f"{verdict['reason']}; "
                "raise admission.timeout_s, or run when the cluster is free"
            )
        if (verdict["position"], verdict["reason"]) != last:
            last = (verdict["position"], verdict["reason"])
            if on_wait is not None:
                on_wait(verdict["reason"], verdict["position"])


def resize(ticket: str, gang: GangSpec) -> None:
    """Book what an elastic step's lease ``ticket`` holds now (from any process: Ray Train's
    controller calls it when the worker group starts with another size)."""
    with contextlib.suppress(Exception):  # the queue is restarting: its renewal books the lease again
        ray.get(admission().resize.remote(ticket, [dict(b) for b in gang.bundles], gang.strategy), timeout=10)


def release(ticket: str) -> None:
    """Release the lease or queue place ``ticket`` holds, wherever it was taken."""
    with contextlib.suppress(Exception):  # no queue, or the cluster is going away: TTLs expire it
        ray.get(admission().release.remote(ticket), timeout=10)


def release_run(run_id: str) -> int:
    """Release the leases a dead driver of ``run_id`` left in the queue; return how many."""
    try:
        handle = ray.get_actor(ADMISSION_ACTOR, namespace=ADMISSION_NAMESPACE)
    except ValueError:
        return 0  # nothing on this cluster has used the queue yet
    return ray.get(handle.release_run.remote(run_id), timeout=10)


def admission_snapshot() -> dict | None:
    """The queue as plain data (holders, waiters, each node's free resources in its books), or
    None when nothing on this cluster has used it yet."""
    try:
        handle = ray.get_actor(ADMISSION_ACTOR, namespace=ADMISSION_NAMESPACE)
    except ValueError:
        return None
    return ray.get(handle.snapshot.remote())
