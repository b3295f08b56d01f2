"""A diamond of task steps for the runner's unit tests: source → (left, right) → join."""

from __future__ import annotations

from raytrain_orch import Artifact, Pipeline, StepContext

pipeline = Pipeline("diamond")


@pipeline.task
def source(ctx: StepContext) -> dict[str, float]:
    return {"value": 1.0}


@pipeline.task
def left(ctx: StepContext, source: Artifact) -> dict[str, float]:
    return {"value": source.metrics["value"] + 1}


@pipeline.task
def right(ctx: StepContext, source: Artifact) -> dict[str, float]:
    return {"value": source.metrics["value"] * 10}


@pipeline.task
def join(ctx: StepContext, left: Artifact, right: Artifact) -> dict[str, float]:
    return {"value": left.metrics["value"] + right.metrics["value"]}
