"""The ports the runner talks to: a ``Backend`` that runs one step attempt (Ray in production,
plain calls in the unit tests) and a ``TrackingSink`` that it tells what happened (``RunTree``
for MLflow; ``NoTracking`` when the run directory is the whole record)."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol

from raytrain_orch.context import StepContext
from raytrain_orch.core.events import Consumer
from raytrain_orch.core.placement import ClusterSpec
from raytrain_orch.core.plan import StepPlan
from raytrain_orch.core.policy import Failure
from raytrain_orch.store.artifacts import Artifact
from raytrain_orch.store.state import RunState, Status


class Backend(Protocol):
    def cluster(self) -> ClusterSpec: ...
    def run_step(self, step: StepPlan, fn: Callable, ctx: StepContext, inputs: Mapping[str, Artifact]) -> Artifact: ...
    def drain_events(self) -> list[dict[str, Any]]: ...
    def describe_failure(self, step: str, attempt: int, error: BaseException) -> Failure: ...
    def keep_stacks(self, step: str, attempt: int) -> int:
        """Keep the Python stacks of the attempt's processes in its logs (``attempt-N.stacks.log``);
        return how many processes' stacks were kept."""
        ...

    def end_attempt(self, step: str, attempt: int) -> None:
        """End a running attempt now: its ``run_step`` raises."""
        ...

    def close(self) -> None: ...


class TrackingSink(Protocol):
    """What the runner tells tracking, in the driver thread; it must never block for long."""

    def begin(self, state: RunState) -> None: ...
    def resume(self, state: RunState) -> None: ...
    def sync(self, state: RunState) -> None: ...
    def finish(self, state: RunState, status: Status) -> None: ...
    def start_step(self, state: RunState, step: StepPlan, attempt: int) -> None:
        """Open the attempt's run; its id reaches the record later, through ``sync``."""
        ...

    def reused(self, state: RunState, step: StepPlan, attempt: int, metrics: dict[str, float]) -> None: ...
    def succeeded(self, state: RunState, step: StepPlan, attempt: int, artifact: Artifact) -> None: ...
    def ended(self, step: str, attempt: int, status: Status, error: str | None = None) -> None: ...
    def consume(self, record: Mapping[str, Any]) -> Any:
        """A worker's event, as it arrives (``core.events.Consumer``: a hook per event it logs)."""
        ...


class NoTracking(Consumer):
    """The sink of a runner without tracking: the run directory is the whole record."""

    def begin(self, state: RunState) -> None:
        pass

    def resume(self, state: RunState) -> None:
        pass

    def sync(self, state: RunState) -> None:
        pass

    def finish(self, state: RunState, status: Status) -> None:
        pass

    def start_step(self, state: RunState, step: StepPlan, attempt: int) -> None:
        pass

    def reused(self, state: RunState, step: StepPlan, attempt: int, metrics: dict[str, float]) -> None:
        pass

    def succeeded(self, state: RunState, step: StepPlan, attempt: int, artifact: Artifact) -> None:
        pass

    def ended(self, step: str, attempt: int, status: Status, error: str | None = None) -> None:
        pass
