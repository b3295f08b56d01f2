"""The admission queue: whole gangs are granted in order, so nothing holds part of a cluster.

Pure: no Ray, no clock of its own (callers pass ``now``). ``leases.Admission`` runs one of
these in a named detached actor per cluster, so every driver on the cluster shares it.

The rules:
- A request is a gang (bundles + strategy). It is granted only when the whole gang fits in the
  cluster's resources minus those of the gangs already granted, placed node by node.
- Order is priority (higher first), then arrival. The head of the queue blocks those behind
  it: a large gang is never starved by a stream of small ones that would each fit.
- Each gang belongs to a queue (``core.queues``): one past its queue's quota (and what its cohort
  may lend) waits for quota, holding its own queue but not the others.
- A waiting gang that cannot be admitted otherwise may preempt (``preempt``): lower-priority gangs
  of its queue, or borrowers of the quota it reclaims (``core.preemption`` picks the victims). A
  victim keeps its grant until its holder releases it (after its checkpoint); it then returns at
  the front of its priority.
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
from typing import Any, Mapping

from raytrain_orch.core import preemption
from raytrain_orch.core.placement import Bundle, ClusterSpec, GangSpec, check_gang, place
from raytrain_orch.core.queues import DEFAULT_QUEUE, Quotas, Usage, add_usage


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
    queue: str = DEFAULT_QUEUE
    preemptible: bool = False  # a train step that checkpoints; never a task step
    min_runtime_s: float = 0.0  # not preempted sooner than this after its grant
    min_bundles: int = 0  # an elastic gang's minimum (it may be shrunk down to it)
    held: str | None = None  # why it may not go yet though it may fit: its queue's quota, or whom it made room for
    preempted_by: dict[str, Any] | None = None  # who preempts it: label, priority, queue, keep (bundles)
    displaced: list[str] = field(default_factory=list)  # the gangs preempted for it


#: What a holder says of its gang besides its bundles (``submit``'s keyword arguments).
TERMS = ("queue", "preemptible", "min_runtime_s", "min_bundles")


@dataclass(frozen=True)
class Verdict:
    """What the holder of a ticket learns when it asks."""

    state: str  # "granted" | "waiting" | "unknown"
    position: int = 0  # 1-based place among the waiting, when waiting
    reason: str = ""
    lacking: bool = False  # waiting for capacity the cluster does not have at all (it lost nodes)
    displaced: tuple[str, ...] = ()  # granted: the gangs preempted to make room for it


@dataclass
class AdmissionQueue:
    requests: dict[str, Request] = field(default_factory=dict)
    quotas: Quotas = field(default_factory=Quotas)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _returning: dict[str, int] = field(default_factory=dict)  # a preempted gang's place, by label
    _owed: dict[str, str] = field(default_factory=dict)  # a preempted gang's label → the ticket it made room for

    # --- the holder's calls ---------------------------------------------------------------------
    def submit(
        self,
        ticket: str,
        gang: GangSpec,
        *,
        label: str,
        priority: int = 0,
        ttl_s: float = 30.0,
        now: float,
        **terms: Any,
    ) -> None:
        """Enqueue a gang (``terms``: its ``TERMS``); submitting a ticket again only keeps it alive.
        A gang that was preempted comes back at the place it had (the front of its priority)."""
        if ticket in self.requests:
            self.requests[ticket].seen_at = now
            return
        seq = self._returning.pop(label, None)
        seq = next(self._seq) if seq is None else seq
        self.requests[ticket] = Request(ticket, gang, label, priority, seq, ttl_s, now, now, **_terms(terms))

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
        self,
        ticket: str,
        gang: GangSpec,
        *,
        label: str,
        priority: int = 0,
        ttl_s: float = 30.0,
        now: float,
        **terms: Any,
    ) -> None:
        """Book again a grant the holder still uses but this queue forgot (it restarted empty):
        its gang is running, so it is granted whether or not it fits the books."""
        if ticket not in self.requests:
            self.submit(ticket, gang, label=label, priority=priority, ttl_s=ttl_s, now=now, **terms)
        self.requests[ticket].granted_at = self.requests[ticket].granted_at or now

    def preempted(self, tickets: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """Of ``tickets``, those asked to give their gang back, with who asks."""
        return {t: dict(r.preempted_by) for t in tickets if (r := self.requests.get(t)) is not None and r.preempted_by}

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
            return Verdict("granted", displaced=tuple(request.displaced))
        waiting = self.waiting()
        position = next(i for i, r in enumerate(waiting, 1) if r.ticket == ticket)
        if request.lacking is not None:
            return Verdict(
                "waiting", position, f"waiting for nodes: the cluster lost capacity — {request.lacking}", lacking=True
            )
        if request.held is not None:
            return Verdict("waiting", position, request.held)
        return Verdict("waiting", position, self._why_waiting(request, position, cluster))

    # --- the queue's own work -------------------------------------------------------------------
    def expire(self, now: float) -> list[Request]:
        """Drop requests and grants whose holder stopped touching them."""
        gone = [r for r in self.requests.values() if now - r.seen_at > r.ttl_s]
        for request in gone:
            del self.requests[request.ticket]
        return gone

    def schedule(self, cluster: ClusterSpec, now: float) -> list[Request]:
        """Grant waiting gangs in order while they fit; return those granted by this call.

        A gang past its queue's quota holds its queue (those behind it in that queue wait too),
        not the others; a gang that does not fit the cluster holds everything behind it."""
        granted = []
        free, usage = self.free(cluster), self.usage()
        held: set[str] = set()  # queues whose head waits for quota
        for request in self.waiting():
            verdict = check_gang(_step(request.label), request.gang, cluster)
            request.lacking = None if verdict.feasible else verdict.reason
            if request.lacking is not None:
                continue  # it cannot block the queue for resources that are not there
            request.held = self._owing(request) or self.quotas.check(request.queue, request.gang.total(), usage)
            if request.queue in held and request.held is None:
                request.held = f"waiting for quota: behind a gang of queue {request.queue} that waits for it"
            if request.held is not None:
                held.add(request.queue)
                continue
            assignment = place(request.gang, free)
            if assignment is None:
                break  # the head waits, and everything behind it waits too
            _subtract(free, request.gang, assignment)
            add_usage(usage, request.queue, request.gang.total())
            request.granted_at = now
            granted.append(request)
        return granted

    def preempt(self, cluster: ClusterSpec, now: float) -> list[Request]:
        """Ask granted gangs to give their resources back (``preempted_by``) for the first waiting
        gang that cannot be admitted otherwise and that evicting them makes fit; return them.
        Nothing more is preempted while earlier victims still hold their gangs."""
        if any(r.preempted_by for r in self.granted()):
            return []
        for waiting in self.waiting():
            if waiting.lacking is not None:
                continue
            evictions = preemption.evictions(self, waiting, cluster, now)
            if evictions:
                return self._evict(waiting, evictions)
            if waiting.held is None:
                return []  # the head waits for capacity: no gang behind it may take the room it waits for
        return []

    def _owing(self, request: Request) -> str | None:
        """Why a preempted gang back in the queue waits for the gang it made room for (one of lower
        priority that reclaims its quota comes after it in order), or None once that gang started."""
        taker = self.requests.get(self._owed.get(request.label, ""))
        if taker is None or taker.granted_at is not None:
            self._owed.pop(request.label, None)
            return None
        return f"waiting for {taker.label}, which preempted it, to start first"

    def waiting(self) -> list[Request]:
        pending = [r for r in self.requests.values() if r.granted_at is None]
        return sorted(pending, key=lambda r: (-r.priority, r.seq))

    def granted(self) -> list[Request]:
        return sorted(
            (r for r in self.requests.values() if r.granted_at is not None), key=lambda r: r.granted_at or 0.0
        )

    def free(self, cluster: ClusterSpec, keep: Mapping[str, int] | None = None) -> list[Bundle]:
        """Each node's resources minus the granted gangs, placed in the order they were granted
        (``keep``: granted gangs counted as holding only that many of their bundles).

        Nodes an autoscaler can add count too (as many as the gangs could use), so a grant can
        be what makes the autoscaler add them.
        """
        bundles = sum(len(r.gang.bundles) for r in self.requests.values())
        free = [dict(n) for n in cluster.grown(bundles)]
        for request in self.granted():
            gang = _kept(request, keep)
            assignment = place(gang, free)
            if assignment is not None:  # else the cluster shrank under it; Ray sorts that out
                _subtract(free, gang, assignment)
        return free

    def usage(self, keep: Mapping[str, int] | None = None) -> dict[str, Usage]:
        """What each queue's granted gangs hold, per resource."""
        usage: dict[str, Usage] = {}
        for request in self.granted():
            add_usage(usage, request.queue, _kept(request, keep).total())
        return usage

    def snapshot(self, cluster: ClusterSpec, now: float) -> dict[str, Any]:
        """Plain data for ``rto queue`` and tests: each queue's quota, use and borrowing; who holds
        what since when; who waits, where, and why."""
        return {
            "queues": self.quotas.report(self.usage()),
            "granted": [_row(r, now) for r in self.granted()],
            "waiting": [
                {**_row(r, now), "position": i, "why": self.verdict(r.ticket, cluster).reason}
                for i, r in enumerate(self.waiting(), 1)
            ],
            "free": self.free(cluster),
        }

    def _evict(self, waiting: Request, evictions: list[preemption.Eviction]) -> list[Request]:
        victims = []
        for eviction in evictions:
            victim = self.requests[eviction.ticket]
            victim.preempted_by = {
                "label": waiting.label,
                "priority": waiting.priority,
                "queue": waiting.queue,
                "keep": eviction.keep,
            }
            self._returning[victim.label] = victim.seq
            self._owed[victim.label] = waiting.ticket
            waiting.displaced.append(victim.label)
            victims.append(victim)
        return victims

    def _why_waiting(self, request: Request, position: int, cluster: ClusterSpec) -> str:
        holders = ", ".join(r.label for r in self.granted()) or "nothing of ours (other work on the cluster)"
        ahead = f"{position - 1} gang(s) ahead in the queue; " if position > 1 else ""
        return f"waiting for resources: {request.gang.describe()}; {ahead}held by {holders}"


def _terms(terms: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(terms) - set(TERMS)
    if unknown:
        raise TypeError(f"unknown admission terms {sorted(unknown)}; known: {', '.join(TERMS)}")
    return {k: v for k, v in terms.items() if v is not None}


def _kept(request: Request, keep: Mapping[str, int] | None) -> GangSpec:
    """``request``'s gang as counted with ``keep`` (what a planned eviction leaves it)."""
    if keep is None or request.ticket not in keep:
        return request.gang
    return GangSpec(request.gang.bundles[: keep[request.ticket]], request.gang.strategy)


def _step(label: str) -> str:
    """The step a label ``RUN_ID/STEP[/TRIAL]`` names (what a person knows it by)."""
    parts = label.split("/")
    return parts[1] if len(parts) > 1 else label


def _subtract(free: list[Bundle], gang: GangSpec, assignment: list[int]) -> None:
    for bundle, node in zip(gang.bundles, assignment, strict=True):
        for key, amount in bundle.items():
            free[node][key] = free[node].get(key, 0.0) - amount


def _row(request: Request, now: float) -> dict[str, Any]:
    row = {
        "ticket": request.ticket,
        "label": request.label,
        "queue": request.queue,
        "gang": request.gang.describe(),
        "resources": request.gang.total(),
        "priority": request.priority,
        "preemptible": request.preemptible,
        "age_s": round(now - request.submitted_at, 3),
    }
    if request.granted_at is not None:
        row["since"] = request.granted_at
        row["preempted_by"] = request.preempted_by
        row["displaced"] = list(request.displaced)
    return row
