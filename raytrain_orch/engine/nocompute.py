"""The null backend: a run whose every step is a cache hit computes nothing, so it needs no Ray."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from raytrain_orch.context import StepContext
from raytrain_orch.core.placement import ClusterSpec
from raytrain_orch.core.plan import StepPlan
from raytrain_orch.core.policy import Failure
from raytrain_orch.store.artifacts import Artifact


class NoCompute:
    """The runner's ``Backend`` when no step must compute: asked to run one, it says the plan was wrong."""

    def cluster(self) -> ClusterSpec:
        return ClusterSpec()

    def run_step(self, step: StepPlan, fn: Callable, ctx: StepContext, inputs: Mapping[str, Artifact]) -> Artifact:
        raise RuntimeError(f"step {step.name} needs compute, but the run was planned as fully cached")

    def drain_events(self) -> list[dict[str, Any]]:
        return []

    def describe_failure(self, step: str, attempt: int, error: BaseException) -> Failure:
        return Failure(step, attempt, "infra", type(error).__name__, str(error))

    def keep_stacks(self, step: str, attempt: int) -> int:
        return 0

    def end_attempt(self, step: str, attempt: int) -> None:
        pass

    def close(self) -> None:
        pass
