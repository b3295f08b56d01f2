"""A train step whose loop has a bug that shows at its second epoch."""

from __future__ import annotations

from pydantic import Field

from raytrain_orch import Params, Pipeline

pipeline = Pipeline("bad_train")


class LoopParams(Params):
    epochs: int = Field(5, ge=1)
    fail_at_epoch: int = Field(1, ge=0)


@pipeline.train(params=LoopParams)
def train(ctx, params: LoopParams) -> None:
    state = ctx.restore()
    start = state["epoch"] + 1 if state else 0
    for epoch in range(start, params.epochs):
        if epoch == params.fail_at_epoch:
            raise ValueError(f"bad shape at epoch {epoch}")
        ctx.report({"epoch": epoch}, state={"epoch": epoch})
