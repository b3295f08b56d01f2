"""Queues of a shared cluster: quotas per team, cohorts that lend idle quota, and which running
gangs a waiting one may preempt.

Pure: no Ray. The cluster's admission actor (``ray/admission.py``) holds one ``QueuesFile``
(applied with ``rto queues apply queues.yaml``); ``core.admission.AdmissionQueue`` asks it
whether a gang fits its queue's quota and whom to preempt::

    queues:
      team-a: {quota: {GPU: 2}, cohort: research, borrowing_limit: {GPU: 2}}
      team-b: {quota: {GPU: 2}, cohort: research}
      batch:  {quota: {CPU: 16}, preemption: never}

The rules:
- A queue's ``quota`` limits the resources it names (summed over its granted gangs); resources it
  does not name are not limited. ``default`` always exists; undefined, it has no quota.
- Queues of one ``cohort`` lend each other their idle quota: a queue may go past its quota while
  the cohort's total use stays within the cohort's total quota, by at most its
  ``borrowing_limit`` (unset: no limit).
- A waiting gang may preempt granted gangs of lower priority in its own queue; a gang within its
  queue's quota may also reclaim it from the cohort's borrowers, whatever their priority.
  ``preemption: never`` keeps every gang of a queue from being preempted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

from pydantic import Field, NonNegativeFloat

from raytrain_orch.core.errors import ConfigError
from raytrain_orch.core.validation import StrictModel, validate

DEFAULT_QUEUE = "default"
#: Ray's own resources; a custom one a node offers is known once the cluster reports it.
STANDARD_RESOURCES = ("CPU", "GPU", "memory")

Usage = dict[str, float]


class QueueDefinition(StrictModel):
    quota: dict[str, NonNegativeFloat] = Field(
        default_factory=dict,
        description="Nominal quota per resource, summed over the queue's running gangs, e.g. {GPU: 8, CPU: 64}; "
        "resources not named are not limited.",
    )
    cohort: str | None = Field(
        None,
        description="Queues of one cohort borrow each other's idle quota (None: this queue lends and borrows none).",
    )
    borrowing_limit: dict[str, NonNegativeFloat] | None = Field(
        None, description="The most this queue may use beyond its quota, per resource (None: no limit)."
    )
    preemption: Literal["lower_priority", "never"] = Field(
        "lower_priority",
        description="'lower_priority': its gangs may be preempted by higher-priority gangs of the queue, or when "
        "they borrow and a lender reclaims its quota; 'never': no gang of this queue is ever preempted.",
    )


class QueuesFile(StrictModel):
    queues: dict[str, QueueDefinition] = Field(
        default_factory=dict, description="The cluster's queues by name; 'default' exists even when not listed."
    )

    @classmethod
    def parse(cls, raw: Any, source: str = "queues file") -> QueuesFile:
        return validate(cls, raw if raw is not None else {}, source=source)

    def check_resources(self, known: set[str]) -> None:
        """A one-line error for a resource no node of the cluster offers (a typo such as ``gpu``)."""
        valid = sorted(known | set(STANDARD_RESOURCES))
        for name, queue in self.queues.items():
            for where, amounts in (("quota", queue.quota), ("borrowing_limit", queue.borrowing_limit or {})):
                for resource in amounts:
                    if resource not in valid:
                        raise ConfigError(
                            f"queues.{name}.{where}: unknown resource {resource!r}; the cluster has {', '.join(valid)}"
                        )


@dataclass(frozen=True)
class Quotas:
    """The applied queue definitions, as admission asks them."""

    file: QueuesFile = QueuesFile()

    def names(self) -> list[str]:
        return sorted({DEFAULT_QUEUE, *self.file.queues})

    def definition(self, queue: str) -> QueueDefinition:
        return self.file.queues.get(queue) or QueueDefinition()

    def unknown(self, queue: str) -> str | None:
        """The one-line error for a queue that does not exist, else None."""
        if queue in self.names():
            return None
        return f"admission.queue: no queue {queue!r} on this cluster; its queues are {', '.join(self.names())}"

    def preemptible(self, queue: str) -> bool:
        return self.definition(queue).preemption != "never"

    def cohort(self, queue: str) -> list[str]:
        """The queues that lend to and borrow from ``queue`` (itself included)."""
        cohort = self.definition(queue).cohort
        if cohort is None:
            return [queue]
        return [name for name in self.names() if self.definition(name).cohort == cohort]

    def borrowed(self, queue: str, usage: Mapping[str, Usage]) -> Usage:
        """What ``queue`` uses beyond its quota, per limited resource."""
        used, quota = usage.get(queue, {}), self.definition(queue).quota
        return {r: used.get(r, 0.0) - q for r, q in quota.items() if used.get(r, 0.0) > q}

    def check(self, queue: str, need: Mapping[str, float], usage: Mapping[str, Usage]) -> str | None:
        """None when a gang needing ``need`` fits ``queue``'s quota (borrowing if it may), given
        the queues' ``usage``; else why not, for people."""
        definition = self.definition(queue)
        used = usage.get(queue, {})
        for resource, quota in definition.quota.items():
            after = used.get(resource, 0.0) + need.get(resource, 0.0)
            if need.get(resource, 0.0) <= 0 or after <= quota + 1e-9:
                continue
            over = f"waiting for quota: queue {queue} uses {_n(used.get(resource, 0.0))} of {_n(quota)} {resource}"
            if definition.cohort is None:
                return f"{over} and borrows from no cohort"
            limit = (definition.borrowing_limit or {}).get(resource)
            if limit is not None and after - quota > limit + 1e-9:
                return f"{over}; borrowing {_n(after - quota)} would pass its borrowing_limit of {_n(limit)}"
            members = self.cohort(queue)
            total_quota = sum(self.definition(m).quota.get(resource, 0.0) for m in members)
            total_used = sum(usage.get(m, {}).get(resource, 0.0) for m in members)
            if total_used + need.get(resource, 0.0) > total_quota + 1e-9:
                return f"{over}; cohort {definition.cohort} has no idle {resource} to lend"
        return None

    def within_quota(self, queue: str, need: Mapping[str, float], usage: Mapping[str, Usage]) -> bool:
        """Whether the gang fits ``queue``'s own quota without borrowing (what lets it reclaim)."""
        used = usage.get(queue, {})
        quota = self.definition(queue).quota
        return all(used.get(r, 0.0) + need.get(r, 0.0) <= q + 1e-9 for r, q in quota.items())

    def report(self, usage: Mapping[str, Usage]) -> dict[str, dict[str, Any]]:
        """Each queue's definition, what it uses and what it borrows (``rto queue``)."""
        return {
            name: {
                **self.definition(name).model_dump(),
                "uses": dict(usage.get(name, {})),
                "borrows": self.borrowed(name, usage),
            }
            for name in sorted({*self.names(), *usage})
        }


def add_usage(usage: dict[str, Usage], queue: str, amounts: Mapping[str, float], sign: float = 1.0) -> None:
    used = usage.setdefault(queue, {})
    for resource, amount in amounts.items():
        used[resource] = used.get(resource, 0.0) + sign * amount


def _n(value: float) -> str:
    return f"{value:g}"
