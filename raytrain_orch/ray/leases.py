"""The cluster's admission queue on Ray: the actor that hosts it, and the lease client.

Every step attempt runs under a lease of the admission queue (``Leases.admitted``), which grants its
whole gang or makes it wait; nothing of the cluster is held while waiting. Under the lease:

- a task step reserves its gang as one placement group (``gangs.reserved``), all or nothing,
  runs its Ray task in it, and removes the group when the step ends however it ends;
- a train step lets ``TorchTrainer`` place its workers' own placement group. The lease covers
  exactly that group: the workers' bundles and strategy are the gang, and Ray Train's
  controller actor asks for no resources (``num_cpus=0``). Worker-group restarts after a
  failure happen inside the same lease, so a recovering step never re-queues.

The queue is one named, detached actor per cluster (``ray/admission.py``). A lease that the
queue preempts is told so by its renewal (``on_preempted``): its holder checkpoints, stops and
releases it, then asks again.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import ray

from raytrain_orch.core import constants
from raytrain_orch.core.errors import AdmissionTimeoutError, CapacityLostError
from raytrain_orch.core.placement import GangSpec
from raytrain_orch.ray.admission import (  # noqa: F401 — the lease client's callers reach the queue's calls here too
    admission,
    admission_snapshot,
    release,
    release_run,
    resize,
)
from raytrain_orch.ray.session import head_node_id


@dataclass
class _Lease:
    """A lease this client holds or waits for: the queue it asked, and what ends its renewals."""

    handle: ray.actor.ActorHandle
    stop: threading.Event = field(default_factory=threading.Event)
    on_preempted: Callable[[dict[str, Any]], None] | None = None
    preempted: dict[str, Any] | None = None  # who asked for its gang back, once asked


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
        terms: Mapping[str, Any] | None = None,
        on_preempted: Callable[[dict[str, Any]], None] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Hold a lease on ``gang`` from the cluster's admission queue; yield how it was granted
        (``waited_s``, and ``displaced``: the gangs preempted to make room for it).

        Waits in the queue (reporting each change of position through ``on_wait``) until the whole
        gang fits, and raises ``AdmissionTimeoutError`` after ``timeout_s``. A gang the cluster can
        no longer hold at all (it lost nodes) waits for them to join at most ``timeout_s`` or, when
        that is None, ``RTO_CAPACITY_WAIT_S``. The lease is renewed while held and released on exit,
        however the block ends. A caller-chosen ``ticket`` lets another process ``release`` the
        lease (a process that is killed cannot). ``terms``: the gang's queue, whether it may be
        preempted, its ``min_runtime_s`` and an elastic gang's ``min_bundles``
        (``core.admission.TERMS``); ``on_preempted`` is called, once, with who preempts it.
        """
        ticket = ticket or f"{label}/{uuid.uuid4().hex[:8]}"
        lease = _Lease(self.queue(), on_preempted=on_preempted)
        with self._lock:
            self._held[ticket] = lease
        try:
            request = (ticket, [dict(b) for b in gang.bundles], gang.strategy, label, priority)
            ttl = ttl_s or constants.LEASE_TTL_S
            agreed = dict(terms or {})
            granted = _wait(lease.handle, gang, (*request, ttl), timeout_s, on_wait, agreed)
            renewal = (lease, (*request, ttl), agreed)
            threading.Thread(target=self._renew, args=renewal, name=f"rto-lease-{label}", daemon=True).start()
            yield granted
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

    def _renew(self, lease: _Lease, request: tuple, terms: dict[str, Any]) -> None:
        """Keep a granted lease alive; book it again if the queue restarted (or was replaced) and
        forgot it; tell the holder when the queue preempts it."""
        ticket, ttl_s = request[0], request[-1]
        while not lease.stop.wait(min(ttl_s / 6, constants.PREEMPTION_POLL_S)):
            try:
                answer = ray.get(lease.handle.touch.remote([ticket]), timeout=ttl_s / 2)
                if answer["unknown"] and not lease.stop.is_set():
                    lease.handle.reclaim.remote(*request, terms)
                preempted = answer["preempted"].get(ticket)
                if preempted and lease.preempted is None:
                    lease.preempted = preempted
                    if lease.on_preempted is not None:
                        lease.on_preempted(preempted)
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
    terms: dict[str, Any],
) -> dict[str, Any]:
    """Wait in the queue until ``request`` (its ``wait`` arguments but the poll) is granted;
    return the seconds waited and whom it displaced (see ``Leases.admitted``)."""
    label = request[3]
    started, last, lacking_since = time.monotonic(), None, None
    limit = timeout_s if timeout_s is not None else constants.CAPACITY_WAIT_S
    while True:
        # The first call answers at once, so a waiting step says so without delay.
        poll = 0.0 if last is None else constants.ADMISSION_POLL_S
        if timeout_s is not None:
            poll = max(0.0, min(poll, timeout_s - (time.monotonic() - started)))
        verdict = ray.get(handle.wait.remote(*request, poll, terms))
        if verdict["state"] == "granted":
            return {"waited_s": time.monotonic() - started, "displaced": verdict.get("displaced", [])}
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
