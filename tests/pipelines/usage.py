"""Two task steps for the run report's utilisation: one that sleeps, one that computes on every
CPU its gang reserved (torch threads, one per reserved CPU)."""

from __future__ import annotations

import time

from pydantic import Field

from raytrain_orch import Artifact, Params, Pipeline, StepContext

pipeline = Pipeline("usage")


class Seconds(Params):
    seconds: float = Field(4.0, gt=0)
    threads: int = Field(2, ge=1)


@pipeline.task(params=Seconds)
def idle(ctx: StepContext, params: Seconds) -> dict[str, float]:
    time.sleep(params.seconds)
    return {"slept_s": params.seconds}


@pipeline.task(params=Seconds)
def busy(ctx: StepContext, idle: Artifact, params: Seconds) -> dict[str, float]:
    import torch

    torch.set_num_threads(params.threads)
    a = torch.randn(768, 768)
    products, until = 0, time.monotonic() + params.seconds
    while time.monotonic() < until:
        a = torch.tanh(a @ a)
        products += 1
    return {"products": float(products)}
