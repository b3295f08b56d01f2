"""Steps that hang on their first attempt, for hang detection on a real Ray.

``prepare`` sleeps (no heartbeat) past its ``hang_timeout_s`` on attempt 1, then on attempt 2
works slowly with heartbeats, longer than that limit in all. ``train`` runs 2 DDP workers; on
attempt 1 its rank 1 blocks forever before the gradient all-reduce of epoch ``hang_epoch``, so
rank 0 blocks in that collective too; the retry resumes from the last checkpoint.
"""

from __future__ import annotations

import threading
import time

import torch
from pydantic import Field

from raytrain_orch import Artifact, Output, Params, Pipeline

pipeline = Pipeline("hangs", description="Steps that hang once, then work.")


class PrepareParams(Params):
    sleep_s: float = Field(60.0, description="Attempt 1: sleep this long without a heartbeat.")
    slow_s: float = Field(6.0, description="Attempt 2: work this long, with a heartbeat every half second.")


@pipeline.task(params=PrepareParams)
def prepare(ctx, params: PrepareParams) -> Output:
    if ctx.attempt == 1:
        time.sleep(params.sleep_s)  # hangs: no heartbeat
    began = time.monotonic()
    while time.monotonic() - began < params.slow_s:
        time.sleep(0.5)
        ctx.heartbeat()
    return Output(metrics={"worked_s": round(time.monotonic() - began, 1)})


class TrainParams(Params):
    epochs: int = Field(6, ge=1)
    epoch_s: float = Field(0.5, ge=0, description="Each epoch's work, as a sleep.")
    hang_epoch: int = Field(3, description="Attempt 1: rank 1 blocks in this epoch (-1: never).")


@pipeline.train(params=TrainParams)
def train(ctx, params: TrainParams, prepare: Artifact) -> None:
    state = ctx.restore()
    start = state["epoch"] + 1 if state else 0
    model = ctx.prepare_model(torch.nn.Linear(4, 1))
    if state:
        model.module.load_state_dict(state["model"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for epoch in range(start, params.epochs):
        time.sleep(params.epoch_s)
        if ctx.attempt == 1 and ctx.rank == 1 and epoch == params.hang_epoch:
            print(f"rank 1 blocks at {time.time():.3f}", flush=True)
            threading.Event().wait()  # the hang: never set
        optimizer.zero_grad()
        model(torch.ones(8, 4)).sum().backward()  # DDP's all-reduce: rank 0 waits here for rank 1
        optimizer.step()
        ctx.report({"epoch": epoch}, state={"epoch": epoch, "model": model.module.state_dict()})
