"""Which steps of a run may start, which are skipped, and a conditional step's verdict.

A step may start once each input is done, or skipped while the step declares it ``optional``
(it receives None for it). A step is skipped when an input failed, or was skipped and is not
optional. A conditional step (``when=``) is decided in the driver once its inputs are done: true
runs it, false skips it (``condition false``), and a condition that raises fails it as the
step's own error.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from raytrain_orch.core.events import Event, make
from raytrain_orch.core.plan import StepPlan
from raytrain_orch.core.text import gist
from raytrain_orch.engine import mapping
from raytrain_orch.store.artifacts import Artifact
from raytrain_orch.store.state import RunState, Status

CONDITION_FALSE = "condition false"


def settled(step: StepPlan, state: RunState, dep: str) -> bool:
    """Whether input ``dep`` lets ``step`` start: done, or skipped and optional."""
    status = state.steps[dep].status
    return status.done or (status is Status.SKIPPED and dep in step.optional)


def blocked(steps: Iterable[StepPlan], state: RunState) -> list[tuple[str, str]]:
    """Pending steps that can never start, each with why (an input failed, or was skipped)."""
    found = []
    for step in steps:
        if state.steps[step.name].status is not Status.PENDING:
            continue
        failed = [d for d in step.inputs if state.steps[d].status is Status.FAILED]
        skipped = [d for d in step.inputs if state.steps[d].status is Status.SKIPPED and d not in step.optional]
        if failed:
            found.append((step.name, "an upstream step failed"))
        elif skipped:
            found.append((step.name, f"{skipped[0]} was skipped"))
    return found


def inputs(step: StepPlan, names: tuple[str, ...], state: RunState) -> dict[str, Any]:
    """The artifacts of the inputs ``names``: None for one that was skipped, a list (in item order)
    for a mapped one."""
    found: dict[str, Any] = {}
    for dep in names:
        s = state.steps[dep]
        if s.status is Status.SKIPPED:
            found[dep] = None
        elif s.items is not None:
            found[dep] = mapping.fan_in(state, dep)
        else:
            found[dep] = Artifact.from_dict(s.artifact or {})
    return found


@dataclass(frozen=True)
class Verdict:
    """A condition's outcome: ``run``, or why not (``error`` and ``traceback`` when it raised)."""

    run: bool
    error: str = ""
    error_type: str = ""
    traceback: str = ""

    @property
    def status(self) -> Status:
        """The step's status when it does not run: failed (its condition raised) or skipped."""
        return Status.FAILED if self.error else Status.SKIPPED

    @property
    def summary(self) -> str | None:
        return f"its condition raised {self.error}" if self.error else None


def record(step: str, attempt: int, verdict: Verdict) -> dict[str, Any]:
    """The event a condition that did not hold records: the step skipped, or failed (it raised)."""
    if not verdict.error:
        return make(Event.STEP_SKIPPED, step=step, reason=CONDITION_FALSE)
    return make(
        Event.STEP_FAILED,
        step=step,
        attempt=attempt,
        error=verdict.summary,
        kind="user",
        reason="the step's condition (when=) raised",
        traceback=verdict.traceback,
    )


def decide(when: Callable[..., Any] | None, arguments: Mapping[str, Artifact | None]) -> Verdict:
    """Call a step's condition with its upstream artifacts; a raise is the step's own error."""
    if when is None:
        return Verdict(True)
    try:
        return Verdict(bool(when(**arguments)))
    except Exception as e:  # noqa: BLE001 — the user's condition: its error fails the step, shown as it is
        return Verdict(False, gist(f"{type(e).__name__}: {e}"), type(e).__name__, traceback.format_exc())
