"""The admission queue: whole gangs are granted in order, so nothing holds part of a cluster.

Pure: no Ray, no clock of its own (callers pass ``now``). ``leases.Admission`` runs one of
these in a named detached actor per cluster, so every driver on the cluster shares it.

The rules:
- A request is a gang (bundles + strategy). It is granted only when the whole gang fits in the
  cluster's resources minus those of the gangs already granted, placed node by node.
- Order is priority (higher first), then arrival. The head of the queue blocks those behind
  it: a large gang is never starved by a stream of small ones that would each fit.
- A gang the cluster as it is now can never hold (it lost nodes since the driver's preflight)
  neither blocks the queue nor is turned away: it waits, saying what is missing, for nodes to
  join; how long is its holder's call (``leases.Leases.admitted``).
- Every request and grant is kept alive by its holder (``touch``); one not touched within its
  ``ttl_s`` belongs to a driver that died and is dropped, so its resources return to the pool.
  A queue that restarted empty learns its grants again from their holders (``reclaim``).

A lease is an accounting of resources, not a reservation: the holder then creates the real
placement group (or lets Ray Train create its workers' group) inside the lease. Because granted
gangs never add up to more than the cluster holds, each such group is placed as soon as Ray has
returned the resources of the group before it — waiting, but never deadlocked.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from raytrain_orch.core.placement import Bundle, ClusterSpec, GangSpec, check_gang, place


@dataclass
class Request:
    ticket: str
    gang: GangSpec
    label: str  # who asks, for people: "RUN_ID/STEP"
    priority: int
    seq: int
    ttl_s: float
    submitted_at: float
    seen_at: float
    granted_at: float | None = None
    lacking: str | None = None  # why the cluster as it is now cannot hold the gang at all


@dataclass(frozen=True)
class Verdict:
    """What the holder of a ticket learns when it asks."""

    state: str  # "granted" | "waiting" | "unknown"
    position: int = 0  # 1-based place among the waiting, when waiting
    reason: str = ""
    lacking: bool = False  # waiting for capacity the cluster does not have at all (it lost nodes)


@dataclass
class AdmissionQueue:
    requests: dict[str, Request] = field(default_factory=dict)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    # --- the holder's calls ---------------------------------------------------------------------
    def submit(
        self, ticket: str, gang: GangSpec, *, label: str, priority: int = 0, ttl_s: float = 30.0, now: float
    ) -> None:
        """Enqueue a gang; submitting a ticket again only keeps it alive."""
        if ticket in self.requests:
            self.requests[ticket].seen_at = now
            return
        self.requests[ticket] = Request(ticket, gang, label, priority, next(self._seq), ttl_s, now, now)

    def touch(self, tickets: list[str] | tuple[str, ...], now: float) -> list[str]:
        """Keep ``tickets`` alive; return those this queue does not know (it restarted empty)."""
        unknown = []
        for ticket in tickets:
            if ticket in self.requests:
                self.requests[ticket].seen_at = now
            else:
                unknown.append(ticket)
        return unknown

    def reclaim(
        self, ticket: str, gang: GangSpec, *, label: str, priority: int = 0, ttl_s: float = 30.0, now: float
    ) -> None:
        """Book again a grant the holder still uses but this queue forgot (it restarted empty):
        its gang is running, so it is granted whether or not it fits the books."""
        if ticket not in self.requests:
            self.submit(ticket, gang, label=label, priority=priority, ttl_s=ttl_s, now=now)
        self.requests[ticket].granted_at = self.requests[ticket].granted_at or now

    def resize(self, ticket: str, gang: GangSpec) -> bool:
        """A granted elastic gang grew or shrank: book what it holds now (a fact, so whether or not
        it fits the books). False for a ticket this queue does not know."""
        request = self.requests.get(ticket)
        if request is None:
            return False
        request.gang = gang
        return True

    def release(self, ticket: str) -> bool:
        return self.requests.pop(ticket, None) is not None

    def release_run(self, run_id: str) -> list[Request]:
        """Drop every lease and queue place of ``run_id`` (labels ``RUN_ID/STEP[/TRIAL]``): its
        driver is known dead, so waiting out their TTL would only delay its resumption."""
        gone = [r for r in self.requests.values() if r.label.startswith(f"{run_id}/")]
        for request in gone:
            self.release(request.ticket)
        return gone

    def verdict(self, ticket: str, cluster: ClusterSpec) -> Verdict:
        request = self.requests.get(ticket)
        if request is None:
            return Verdict("unknown", reason="the ticket expired or was released")
        if request.granted_at is not None:
            return Verdict("granted")
        waiting = self.waiting()
        position = next(i for i, r in enumerate(waiting, 1) if r.ticket == ticket)
        if request.lacking is not None:
            return Verdict(
                "waiting", position, f"waiting for nodes: the cluster lost capacity — {request.lacking}", lacking=True
            )
        return Verdict("waiting", position, self._why_waiting(request, position, cluster))

    # --- the queue's own work -------------------------------------------------------------------
    def expire(self, now: float) -> list[Request]:
        """Drop requests and grants whose holder stopped touching them."""
        gone = [r for r in self.requests.values() if now - r.seen_at > r.ttl_s]
        for request in gone:
            del self.requests[request.ticket]
        return gone

    def schedule(self, cluster: ClusterSpec, now: float) -> list[Request]:
        """Grant waiting gangs in order while they fit; return those granted by this call."""
        granted = []
        free = self.free(cluster)
        for request in self.waiting():
            verdict = check_gang(_step(request.label), request.gang, cluster)
            request.lacking = None if verdict.feasible else verdict.reason
            if request.lacking is not None:
                continue  # it cannot block the queue for resources that are not there
            assignment = place(request.gang, free)
            if assignment is None:
                break  # the head waits, and everything behind it waits too
            _subtract(free, request.gang, assignment)
            request.granted_at = now
            granted.append(request)
        return granted

    def waiting(self) -> list[Request]:
        pending = [r for r in self.requests.values() if r.granted_at is None]
        return sorted(pending, key=lambda r: (-r.priority, r.seq))

    def granted(self) -> list[Request]:
        return sorted(
            (r for r in self.requests.values() if r.granted_at is not None), key=lambda r: r.granted_at or 0.0
        )

    def free(self, cluster: ClusterSpec) -> list[Bundle]:
        """Each node's resources minus the granted gangs, placed in the order they were granted.

        Nodes an autoscaler can add count too (as many as the gangs could use), so a grant can
        be what makes the autoscaler add them.
        """
        bundles = sum(len(r.gang.bundles) for r in self.requests.values())
        free = [dict(n) for n in cluster.grown(bundles)]
        for request in self.granted():
            assignment = place(request.gang, free)
            if assignment is not None:  # else the cluster shrank under it; Ray sorts that out
                _subtract(free, request.gang, assignment)
        return free

    def snapshot(self, cluster: ClusterSpec, now: float) -> dict[str, Any]:
        """Plain data for ``rto plan`` and tests: who holds what, who waits and why."""
        return {
            "granted": [_row(r, now) for r in self.granted()],
            "waiting": [{**_row(r, now), "position": i} for i, r in enumerate(self.waiting(), 1)],
            "free": self.free(cluster),
        }

    def _why_waiting(self, request: Request, position: int, cluster: ClusterSpec) -> str:
        holders = ", ".join(r.label for r in self.granted()) or "nothing of ours (other work on the cluster)"
        ahead = f"{position - 1} gang(s) ahead in the queue; " if position > 1 else ""
        return f"waiting for resources: {request.gang.describe()}; {ahead}held by {holders}"


def _step(label: str) -> str:
    """The step a label ``RUN_ID/STEP[/TRIAL]`` names (what a person knows it by)."""
    parts = label.split("/")
    return parts[1] if len(parts) > 1 else label


def _subtract(free: list[Bundle], gang: GangSpec, assignment: list[int]) -> None:
    for bundle, node in zip(gang.bundles, assignment, strict=True):
        for key, amount in bundle.items():
            free[node][key] = free[node].get(key, 0.0) - amount


def _row(request: Request, now: float) -> dict[str, Any]:
    return {
        "ticket": request.ticket,
        "label": request.label,
        "gang": request.gang.describe(),
        "priority": request.priority,
        "age_s": round(now - request.submitted_at, 3),
    }
