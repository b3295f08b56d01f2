"""Which running gangs to preempt for a waiting one: a pure ``*Policy`` that returns a plan.

The rules (docs/gangs.md, "Preemption"):
- Only what makes the waiting gang fit: a plan that would not is no plan, and nothing happens.
- Elastic gangs above their minimum are shrunk first, down to their minimum, before any gang is
  stopped.
- Then the fewest gangs, of the lowest priority first, the most recently granted first.

The caller (``core.admission.AdmissionQueue.preempt``) chooses the candidates (preemptible, past
their ``min_runtime_s``, of lower priority in the queue, or borrowers of the quota the waiting
gang reclaims) and says whether the waiting gang fits once given gangs hold fewer bundles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

from raytrain_orch.core.placement import Bundle, ClusterSpec, place
from raytrain_orch.core.queues import Quotas, Usage


class Books(Protocol):
    """What ``evictions`` reads of the admission queue (``core.admission.AdmissionQueue``)."""

    quotas: Quotas

    def granted(self) -> list[Any]: ...

    def usage(self, keep: Mapping[str, int] | None = None) -> dict[str, Usage]: ...

    def free(self, cluster: ClusterSpec, keep: Mapping[str, int] | None = None) -> list[Bundle]: ...


@dataclass(frozen=True)
class Candidate:
    ticket: str
    priority: int
    granted_at: float
    bundles: int  # what it holds now
    min_bundles: int = 0  # an elastic gang's minimum; 0: it can only be stopped


@dataclass(frozen=True)
class Eviction:
    """One victim: ``keep`` bundles left to it (0: stopped; more: an elastic gang shrunk to that size)."""

    ticket: str
    keep: int

    @property
    def stops(self) -> bool:
        return self.keep == 0


#: Whether the waiting gang fits once each ticket named holds only that many bundles.
Fits = Callable[[Mapping[str, int]], bool]


def plan(candidates: Sequence[Candidate], fits: Fits) -> list[Eviction]:
    """The evictions that make the waiting gang fit, or [] when none would."""
    order = sorted(candidates, key=lambda c: (c.priority, -c.granted_at))
    keep: dict[str, int] = {}
    for candidate in order:  # shrink first
        if 0 < candidate.min_bundles < candidate.bundles:
            keep[candidate.ticket] = candidate.min_bundles
            if fits(keep):
                return _pruned(order, keep, fits)
    for candidate in order:
        keep[candidate.ticket] = 0
        if fits(keep):
            return _pruned(order, keep, fits)
    return []


def _pruned(order: Sequence[Candidate], keep: dict[str, int], fits: Fits) -> list[Eviction]:
    """Undo what the plan does not need, the most valuable victims first: a stop that a shrink would
    do, then a shrink or stop not needed at all."""
    by_ticket = {c.ticket: c for c in order}
    for candidate in reversed(order):
        ticket = candidate.ticket
        if ticket not in keep:
            continue
        for lighter in _lighter(keep[ticket], by_ticket[ticket]):
            trial = {**keep}
            if lighter is None:
                del trial[ticket]
            else:
                trial[ticket] = lighter
            if fits(trial):
                keep = trial
                break
    return [Eviction(c.ticket, keep[c.ticket]) for c in order if c.ticket in keep]


def _lighter(kept: int, candidate: Candidate) -> list[int | None]:
    """Gentler evictions than keeping ``kept`` bundles, gentlest first (None: not evicted)."""
    options: list[int | None] = [None]
    if kept == 0 and 0 < candidate.min_bundles < candidate.bundles:
        options.append(candidate.min_bundles)
    return options


def evictions(queue: Books, waiting: Any, cluster: ClusterSpec, now: float) -> list[Eviction]:
    """The evictions that admit ``waiting``, or []. Candidates are granted gangs that may be
    preempted (preemptible, past their ``min_runtime_s``, in a queue without ``preemption: never``)
    and either of lower priority in ``waiting``'s queue or borrowers in its cohort while
    ``waiting`` fits its own queue's quota (it reclaims it)."""
    usage = queue.usage()
    reclaims = queue.quotas.within_quota(waiting.queue, waiting.gang.total(), usage)
    candidates = []
    for r in queue.granted():
        since = r.granted_at if r.granted_at is not None else now
        if not r.preemptible or not queue.quotas.preemptible(r.queue) or now - since < r.min_runtime_s:
            continue
        lower = r.queue == waiting.queue and r.priority < waiting.priority
        borrower = (
            reclaims
            and r.queue != waiting.queue
            and r.queue in queue.quotas.cohort(waiting.queue)
            and bool(queue.quotas.borrowed(r.queue, usage))
        )
        if lower or borrower:
            candidates.append(Candidate(r.ticket, r.priority, since, len(r.gang.bundles), r.min_bundles))

    def fits(keep: Mapping[str, int]) -> bool:
        if queue.quotas.check(waiting.queue, waiting.gang.total(), queue.usage(keep)) is not None:
            return False
        return place(waiting.gang, queue.free(cluster, keep)) is not None

    return plan(candidates, fits) if candidates else []
