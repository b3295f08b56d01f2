"""A small pipeline whose middle step fails on its first attempts, for failure-path tests."""

from __future__ import annotations

import builtins

from pydantic import Field

from raytrain_orch import Artifact, Params, Pipeline, StepContext

pipeline = Pipeline("flaky")


class FlakyParams(Params):
    error: str = Field("ValueError", description="Built-in exception type raised on failing attempts.")
    failing_attempts: int = Field(1, ge=0, description="Attempts that fail before one succeeds.")


@pipeline.task
def source(ctx: StepContext) -> dict[str, float]:
    return {"value": 1.0}


@pipeline.task(params=FlakyParams)
def flaky(ctx: StepContext, params: FlakyParams, source: Artifact) -> dict[str, float]:
    if ctx.attempt <= params.failing_attempts:
        raise getattr(builtins, params.error)(f"attempt {ctx.attempt} of step flaky failed on purpose")
    return {"value": source.metrics["value"] + 1, "attempts_needed": float(ctx.attempt)}


@pipeline.task
def after(ctx: StepContext, flaky: Artifact) -> dict[str, float]:
    return {"final": flaky.metrics["value"] * 10}
