"""Pipelines with conditional steps, for the runner's tests (no Ray).

- ``gated``: evaluate → register only ``when`` the score clears 0.5 → notify after register (skipped
  with it); ``report`` takes register as optional (None when it was skipped).
- ``raising``: a condition that raises (a metric the upstream step does not have).
"""

from __future__ import annotations

from pydantic import Field

from raytrain_orch import Params, Pipeline, StepContext


class EvaluateParams(Params):
    score: float = Field(0.9, ge=0, le=1)


gated = Pipeline("gated")


@gated.task(params=EvaluateParams)
def evaluate(ctx: StepContext, params: EvaluateParams) -> dict[str, float]:
    return {"score": params.score}


@gated.task(when=lambda evaluate: evaluate.metrics["score"] >= 0.5)
def register(ctx: StepContext) -> dict[str, float]:  # its condition reads evaluate; it does not
    return {"registered": 1.0}


@gated.task
def notify(ctx: StepContext, register) -> dict[str, float]:
    return {"notified": 1.0}


@gated.task(optional=["register"])
def report(ctx: StepContext, evaluate, register) -> dict[str, float]:
    return {"score": evaluate.metrics["score"], "registered": 0.0 if register is None else 1.0}


raising = Pipeline("raising")


@raising.task
def measure(ctx: StepContext) -> dict[str, float]:
    return {"accuracy": 0.97}


@raising.task(when=lambda measure: measure.metrics["test_accuracy"] >= 0.95)
def publish(ctx: StepContext, measure) -> dict[str, float]:
    return {"published": 1.0}
