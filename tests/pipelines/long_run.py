"""One task step that reports many epochs, for the event log's tests: what a long training run
sends its driver, without the training (``tests/integration/test_eventlog_s3.py``)."""

from __future__ import annotations

import time

from pydantic import Field

from raytrain_orch import Params, Pipeline, StepContext


class LongParams(Params):
    epochs: int = Field(5000, ge=1)
    epoch_s: float = Field(0.0003, ge=0, description="each epoch's own work (a sleep)")


pipeline = Pipeline("long")


@pipeline.task(params=LongParams)
def train(ctx: StepContext, params: LongParams) -> dict[str, float]:
    loss = 1.0
    for epoch in range(params.epochs):
        time.sleep(params.epoch_s)
        loss *= 0.999
        ctx.emit(
            "epoch",
            epoch=epoch,
            metrics={"loss": loss},
            perf={"samples_per_s": 1000.0},
            epoch_s=params.epoch_s,
            report_s=0.0,
            log_s=0.0,
        )
    return {"loss": loss}
