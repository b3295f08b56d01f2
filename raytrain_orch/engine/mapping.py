"""Mapped steps at run time: a step declared ``map_over="STEP"`` becomes one unit per item of
STEP's ``Output(items=...)`` once STEP is done.

Each unit, ``NAME[i]``, is a step of its own to the runner: its own gang through admission, its
own attempts and retries, its own cache entry (keyed by the step's key without the items' step,
and the item, so a changed item list recomputes only new or changed items), its own MLflow run
under the step's, its own logs. The mapped step is their aggregate: done when every unit is,
failed (naming them) when one failed. ``map.max_concurrency`` caps the units running at once;
``map.failure: fail_fast`` skips the units not started yet once one failed.

A step that takes a mapped step as input receives its units' artifacts as a list, in item order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any, Callable, Collection, Iterator

from raytrain_orch.core.events import Event, make
from raytrain_orch.core.plan import Plan, StepPlan
from raytrain_orch.engine.ports import TrackingSink
from raytrain_orch.store.artifacts import Artifact
from raytrain_orch.store.state import RunState, Status, StepState

_UNSETTLED = (Status.PENDING, Status.WAITING, Status.RUNNING)  # a unit that has yet to end


def unit_name(step: str, index: int) -> str:
    return f"{step}[{index}]"


def item_key(base: str, item: Any) -> str:
    """A unit's cache key: its step's key without the items' step, and its item's value."""
    return hashlib.sha256(f"{base}/{json.dumps(item, sort_keys=True)}".encode()).hexdigest()[:20]


class MappedSteps:
    """The units of a run's mapped steps, as the runner expands and settles them."""

    def __init__(self, plan: Plan, forced: set[str], clock: Callable[[], float], tracking: TrackingSink) -> None:
        self._plan, self._forced = plan, forced  # the runner's forced steps: a forced mapped step forces its units
        self._clock, self._tracking = clock, tracking  # its MLflow run ends with its last unit
        self._units: dict[str, list[StepPlan]] = {}  # by mapped step, in item order
        self._by_name: dict[str, StepPlan] = {}  # every unit, by its name

    def steps(self) -> Iterator[StepPlan]:
        """The plan's steps, each mapped one followed by its units once expanded."""
        for step in self._plan.steps:
            yield step
            yield from self._units.get(step.name, ())

    def plan_of(self, name: str) -> StepPlan:
        """The plan of a step or a unit."""
        return self._by_name.get(name) or self._plan.step(name)

    def declared(self, state: RunState, name: str) -> str:
        """The pipeline's step a step or unit runs."""
        return state.steps[name].parent or name

    def expand(self, state: RunState, step: StepPlan) -> list[dict[str, Any]]:
        """Make ``step``'s units from its items' step's artifact; return what to record."""
        source = state.steps[step.map_over or ""].artifact or {}
        items = list(source.get("items") or ())
        s = state.steps[step.name]
        s.status, s.items, s.attempts, s.error = Status.RUNNING, len(items), s.attempts + 1, None
        s.started_at, s.ended_at = self._clock(), None
        units = []
        for index, item in enumerate(items):
            name, key = unit_name(step.name, index), item_key(step.item_base_key or step.cache_key, item)
            units.append(replace(step, name=name, cache_key=key, map_over=None, map=None, item_base_key=None))
            old = state.steps.get(name)
            attempts = old.attempts if old is not None and old.cache_key == key else 0
            state.steps[name] = StepState(
                kind=step.kind, cache_key=key, attempts=attempts, parent=step.name, item=item, item_index=index
            )
            if step.name in self._forced:
                self._forced.add(name)
        for name in [n for n, other in state.steps.items() if other.parent == step.name]:
            if state.steps[name].item_index is None:  # a unit of an earlier run's list, not this one's
                del state.steps[name]
        self._units[step.name] = units
        self._by_name.update((unit.name, unit) for unit in units)
        mapped = make(Event.STEP_MAPPED, step=step.name, attempt=s.attempts, items=len(items), over=step.map_over)
        return [mapped, *self._finished(state, step.name)]

    def may_start(self, state: RunState, step: StepPlan, running: Collection[str]) -> bool:
        """Whether a unit may start now: its mapped step's ``max_concurrency`` is not reached."""
        parent = state.steps[step.name].parent
        if parent is None:
            return True
        cap = self._plan.step(parent).map
        limit = cap.max_concurrency if cap is not None else None
        return limit is None or sum(1 for u in self._units[parent] if u.name in running) < limit

    def after(self, state: RunState, record: dict[str, Any]) -> list[dict[str, Any]]:
        """What a unit's end changes: ``fail_fast`` skips its siblings not started yet, and the
        mapped step ends once every unit has."""
        unit = state.steps.get(record.get("step", ""))
        if unit is None or unit.parent is None or unit.status in _UNSETTLED:
            return []
        parent = unit.parent
        records = []
        config = self._plan.step(parent).map
        if unit.status is Status.FAILED and config is not None and config.failure == "fail_fast":
            for sibling in self._units[parent]:
                other = state.steps[sibling.name]
                if other.status is Status.PENDING:
                    other.status = Status.SKIPPED
                    reason = f"{record['step']} failed (map.failure: fail_fast)"
                    records.append(make(Event.STEP_SKIPPED, step=sibling.name, reason=reason))
        return records + self._finished(state, parent)

    def _finished(self, state: RunState, parent: str) -> list[dict[str, Any]]:
        """The mapped step's end, once no unit of it is left to run."""
        s, units = state.steps[parent], [state.steps[u.name] for u in self._units[parent]]
        if s.status is not Status.RUNNING or any(
            u.status in (Status.PENDING, Status.RUNNING, Status.WAITING) for u in units
        ):
            return []
        s.ended_at = self._clock()
        failed = [u.name for u in self._units[parent] if state.steps[u.name].status is Status.FAILED]
        where = {"step": parent, "attempt": s.attempts}
        if failed:
            s.status, s.error = Status.FAILED, f"item(s) {', '.join(failed)} failed"
            self._tracking.ended(parent, s.attempts, Status.FAILED, error=s.error)
            return [make(Event.STEP_FAILED, **where, error=s.error, kind="user", reason=s.error, traceback="")]
        s.status = Status.SUCCEEDED
        self._tracking.ended(parent, s.attempts, Status.SUCCEEDED)
        return [make(Event.STEP_SUCCEEDED, **where, metrics={}, duration_s=round(s.duration_s or 0.0, 3))]


def fan_in(state: RunState, step: str) -> list[Artifact]:
    """A mapped step's units' artifacts, in item order (what a step that takes it receives)."""
    count = state.steps[step].items or 0
    return [Artifact.from_dict(state.steps[unit_name(step, i)].artifact or {}) for i in range(count)]
