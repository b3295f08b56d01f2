"""Pipelines with mapped steps, for the runner's tests (no Ray).

``segments``: ``split`` returns the items (params ``names``); ``fit`` runs once per item and
records it; ``pick`` fans in: it receives every item's artifact, in item order.
"""

from __future__ import annotations

import threading
import time

from pydantic import Field

from raytrain_orch import Output, Params, Pipeline, StepContext


class SplitParams(Params):
    names: list[str] = Field(default_factory=lambda: ["north", "south", "east"])


class FitParams(Params):
    fail: list[str] = Field(default_factory=list)  # items whose unit raises ValueError
    seconds: float = 0.0


#: How many units run at once, at most, as the fake backend runs them (a test's barrier reads it).
RUNNING = {"now": 0, "most": 0}
_LOCK = threading.Lock()

segments = Pipeline("segments")


@segments.task(params=SplitParams)
def split(ctx: StepContext, params: SplitParams) -> Output:
    return Output(items=list(params.names), metrics={"segments": float(len(params.names))})


@segments.task(map_over="split", params=FitParams)
def fit(ctx: StepContext, params: FitParams) -> dict[str, float]:
    with _LOCK:
        RUNNING["now"] += 1
        RUNNING["most"] = max(RUNNING["most"], RUNNING["now"])
    try:
        time.sleep(params.seconds)
        if ctx.item in params.fail:
            raise ValueError(f"no data for {ctx.item}")
        return {"index": float(ctx.item_index), "length": float(len(ctx.item))}
    finally:
        with _LOCK:
            RUNNING["now"] -= 1


@segments.task
def pick(ctx: StepContext, fit) -> dict[str, float]:
    lengths = [a.metrics["length"] for a in fit]
    return {
        "units": float(len(fit)),
        "longest": max(lengths, default=0.0),
        "first_index": fit[0].metrics["index"] if fit else -1.0,
    }


class CountParams(Params):
    count: int = Field(3, ge=0)


mapped_train = Pipeline("mapped_train")  # a mapped DDP train step: one worker group per item


@mapped_train.task(name="numbers", params=CountParams)
def _numbers(ctx: StepContext, params: CountParams) -> Output:
    return Output(items=list(range(params.count)))


def _train_item(ctx, params) -> None:
    from tests.pipelines.gangs import ddp_loop

    ddp_loop(ctx, params)


def _train_params():
    from tests.pipelines.gangs import TrainParams

    return TrainParams


mapped_train.train(_train_item, name="train", params=_train_params(), map_over="numbers")
