"""Two independent steps that each take a while, then one that joins them."""

from __future__ import annotations

import time

from pydantic import Field

from raytrain_orch import Artifact, Params, Pipeline, StepContext

pipeline = Pipeline("fanout")


class SleepParams(Params):
    seconds: float = Field(3.0, ge=0)


def _timed(seconds: float) -> dict[str, float]:
    started = time.time()
    time.sleep(seconds)
    return {"started": started, "ended": time.time()}


@pipeline.task(params=SleepParams)
def left(ctx: StepContext, params: SleepParams) -> dict[str, float]:
    return _timed(params.seconds)


@pipeline.task(params=SleepParams)
def right(ctx: StepContext, params: SleepParams) -> dict[str, float]:
    return _timed(params.seconds)


@pipeline.task
def join(ctx: StepContext, left: Artifact, right: Artifact) -> dict[str, float]:
    return {"started": time.time(), "inputs_ended": max(left.metrics["ended"], right.metrics["ended"])}
