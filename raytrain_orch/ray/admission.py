"""The cluster's admission actor: one named, detached actor per cluster that hosts the pure
``core.admission.AdmissionQueue``, and the calls any process makes to it.

It lives on the head node, which lives as long as the cluster, so every driver on a cluster —
``rto run --address``, submitted jobs, sweep trials — shares it. The queue definitions applied
with ``rto queues apply`` are kept in the GCS's key-value store, where a restarted actor finds
them again; the leases it forgot are booked again by their holders' renewals
(``leases.Leases``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any, cast

import ray
from ray.experimental import internal_kv
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raytrain_orch.core.admission import AdmissionQueue
from raytrain_orch.core.placement import ClusterSpec, GangSpec, place
from raytrain_orch.core.queues import QueuesFile, Quotas
from raytrain_orch.ray.session import cluster_spec, head_node_id

log = logging.getLogger(__name__)

ADMISSION_ACTOR = "rto-admission-v4"  # bump the suffix when the actor's methods change
ADMISSION_NAMESPACE = "raytrain_orch"
#: Where the applied queue definitions are kept (the GCS's key-value store outlives the actor).
QUEUES_KEY = b"rto/queues"
_CLUSTER_REFRESH_S = 1.0


class AdmissionActor:
    """The cluster's admission queue, hosted in an async actor so callers can long-poll.
    A plain class; ``Admission`` below is the one place it becomes an actor."""

    def __init__(self) -> None:
        self._queue = AdmissionQueue(quotas=_stored_quotas())
        self._events: dict[str, asyncio.Event] = {}
        self._cluster, self._cluster_at = ClusterSpec(), 0.0
        self._ticker: asyncio.Task | None = None

    async def wait(
        self,
        ticket: str,
        bundles: list[dict],
        strategy: str,
        label: str,
        priority: int,
        ttl_s: float,
        timeout_s: float,
        terms: dict[str, Any] | None = None,
    ) -> dict:
        """Enqueue (or keep alive) ``ticket`` and wait up to ``timeout_s`` for a verdict."""
        self._start_ticker()
        gang = GangSpec(tuple(bundles), strategy)
        self._queue.submit(ticket, gang, label=label, priority=priority, ttl_s=ttl_s, now=time.time(), **(terms or {}))
        self._reschedule()
        if self._verdict(ticket)["state"] == "waiting":
            event = self._events.setdefault(ticket, asyncio.Event())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), timeout_s)
        return self._verdict(ticket)

    async def touch(self, tickets: list[str]) -> dict[str, Any]:
        """Keep ``tickets`` alive: those this queue does not know, and those asked to give their gang back."""
        return {"unknown": self._queue.touch(tickets, time.time()), "preempted": self._queue.preempted(tickets)}

    async def reclaim(
        self,
        ticket: str,
        bundles: list[dict],
        strategy: str,
        label: str,
        priority: int,
        ttl_s: float,
        terms: dict[str, Any] | None = None,
    ) -> None:
        gang = GangSpec(tuple(bundles), strategy)
        self._queue.reclaim(ticket, gang, label=label, priority=priority, ttl_s=ttl_s, now=time.time(), **(terms or {}))
        self._reschedule()

    async def resize(self, ticket: str, bundles: list[dict], strategy: str) -> bool:
        resized = self._queue.resize(ticket, GangSpec(tuple(bundles), strategy))
        self._reschedule()
        return resized

    async def grow(self, ticket: str, bundle: dict, strategy: str, wanted: int) -> int:
        """How many workers of ``bundle`` the elastic lease ``ticket`` may hold, at most ``wanted``:
        what the books hold beside the other grants, never room a waiting gang is owed. Books it."""
        request = self._queue.requests.get(ticket)
        if request is None:
            return wanted  # the queue restarted: its renewal books it again
        held = len(request.gang.bundles)
        size = held
        if not [r for r in self._queue.waiting() if r.lacking is None and r.held is None]:
            others = {ticket: 0}
            free = self._queue.free(self._cluster_spec(), others)
            for n in range(wanted, held, -1):
                if place(GangSpec(tuple(bundle for _ in range(n)), strategy), free) is not None:
                    size = n
                    break
        size = min(size, wanted)
        self._queue.resize(ticket, GangSpec(tuple(bundle for _ in range(size)), strategy))
        return size

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

    async def apply_queues(self, raw: dict) -> list[str]:
        """Replace the queue definitions (validated by the caller) and keep them in the GCS."""
        quotas = Quotas(QueuesFile.parse(raw))
        internal_kv._internal_kv_put(QUEUES_KEY, json.dumps(raw).encode(), overwrite=True)
        self._queue.quotas = quotas
        self._reschedule()
        return quotas.names()

    async def queues(self) -> list[str]:
        return self._queue.quotas.names()

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
            "displaced": list(verdict.displaced),
        }

    def _reschedule(self) -> None:
        now = time.time()
        for gone in self._queue.expire(now):
            log.warning("admission: dropped %s (%s): its driver stopped renewing it", gone.label, gone.gang.describe())
            self._events.pop(gone.ticket, None)
        waiting = {r.ticket for r in self._queue.waiting()}
        cluster = self._cluster_spec()
        self._queue.schedule(cluster, now)
        for victim in self._queue.preempt(cluster, now):
            log.warning("admission: preempting %s for %s", victim.label, (victim.preempted_by or {}).get("label"))
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
        """Expire dead holders, preempt past a ``min_runtime_s``, and notice grown clusters even
        when nobody calls."""
        while True:
            await asyncio.sleep(_CLUSTER_REFRESH_S)
            self._reschedule()


def _stored_quotas() -> Quotas:
    """The queue definitions last applied to this cluster (none: only ``default``)."""
    try:
        stored = internal_kv._internal_kv_get(QUEUES_KEY)
    except Exception:  # noqa: BLE001 — no GCS to ask (a test's plain instance): no definitions
        stored = None
    return Quotas(QueuesFile.parse(json.loads(stored))) if stored else Quotas()


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
    restarts it on the head and the holders' renewals tell it their leases again.
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


def _existing() -> ray.actor.ActorHandle | None:
    try:
        return ray.get_actor(ADMISSION_ACTOR, namespace=ADMISSION_NAMESPACE)
    except ValueError:
        return None  # nothing on this cluster has used the queue yet


def resize(ticket: str, gang: GangSpec) -> None:
    """Book what an elastic step's lease ``ticket`` holds now (from any process: Ray Train's
    controller calls it when the worker group starts with another size)."""
    with contextlib.suppress(Exception):  # the queue is restarting: its renewal books the lease again
        ray.get(admission().resize.remote(ticket, [dict(b) for b in gang.bundles], gang.strategy), timeout=10)


def grow(ticket: str, bundle: dict, strategy: str, wanted: int) -> int:
    """How many workers an elastic step's lease may hold now, at most ``wanted`` (booked)."""
    try:
        return int(ray.get(admission().grow.remote(ticket, dict(bundle), strategy, wanted), timeout=10))
    except Exception:  # noqa: BLE001 — no answer: Ray Train's own decision stands
        return wanted


def release(ticket: str) -> None:
    """Release the lease or queue place ``ticket`` holds, wherever it was taken."""
    with contextlib.suppress(Exception):  # no queue, or the cluster is going away: TTLs expire it
        ray.get(admission().release.remote(ticket), timeout=10)


def release_run(run_id: str) -> int:
    """Release the leases a dead driver of ``run_id`` left in the queue; return how many."""
    handle = _existing()
    return 0 if handle is None else ray.get(handle.release_run.remote(run_id), timeout=10)


def admission_snapshot() -> dict | None:
    """The queue as plain data (queues, holders, waiters, each node's free resources in its
    books), or None when nothing on this cluster has used it yet."""
    handle = _existing()
    return None if handle is None else ray.get(handle.snapshot.remote())


def apply_queues(raw: dict) -> list[str]:
    """Apply queue definitions (``rto queues apply``); return the cluster's queues."""
    return cast(list[str], ray.get(admission().apply_queues.remote(raw), timeout=30))


def queue_names() -> list[str]:
    """The cluster's queues: ``default`` and those applied (read from the GCS, no actor needed)."""
    return _stored_quotas().names()


def unknown_queue(queue: str) -> str | None:
    """The one-line error for a run naming a queue this cluster does not have, else None."""
    return _stored_quotas().unknown(queue)


def stored_queues() -> dict[str, dict[str, Any]]:
    """The cluster's queue definitions as ``rto queue`` shows them, with nothing used."""
    return _stored_quotas().report({})
