"""Generated pipelines for ``bench/scale.py``: many small task steps, and a sweep of tiny trials.

- ``chain``: ``s000 → s001 → … → s199``, each step taking the previous one's output;
- ``fan``: ``source → w001 … w198 → sink``, the middle steps independent of each other;
- ``mapped``: ``source`` returns 200 items, ``work`` is mapped over them (one unit each), ``sink``
  fans in: the same work as ``fan``, declared as one mapped step;
- ``sweep``: one train step (1 DDP worker, a few epochs of a linear model) swept by Tune;
- ``long``: the same train step for many epochs (5,000 by default), reporting each one and
  checkpointing every ``checkpoint_every``: a long run's event log.

A step's inputs are its parameters' names, so each generated function gets a signature that
names its upstream steps. The work of a task step is one small addition, so what a run costs
beyond that is the orchestration.
"""

from __future__ import annotations

import inspect
import os

import torch
from pydantic import Field

from raytrain_orch import Output, Params, Pipeline

STEPS = int(os.environ.get("RTO_BENCH_STEPS", "200"))


def _step(upstream: list[str]):
    def step(ctx, **inputs) -> dict[str, float]:
        return {"value": 1.0 + sum(artifact.metrics["value"] for artifact in inputs.values())}

    parameters = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    parameters += [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in upstream]
    step.__signature__ = inspect.Signature(parameters)
    return step


chain = Pipeline("chain", description=f"{STEPS} task steps in a line.")
for i in range(STEPS):
    chain.task(_step([f"s{i - 1:03d}"] if i else []), name=f"s{i:03d}")

fan = Pipeline("fan", description=f"One source, {STEPS - 2} independent steps, one sink.")
fan.task(_step([]), name="source")
middle = [f"w{i:03d}" for i in range(1, STEPS - 1)]
for name in middle:
    fan.task(_step(["source"]), name=name)
fan.task(_step(middle), name="sink")


class TinyParams(Params):
    epochs: int = Field(3, ge=1)
    lr: float = Field(0.1, gt=0)


sweep = Pipeline("sweep", description="A sweep of tiny DDP trials: the driver's bookkeeping per trial.")


@sweep.train(params=TinyParams)
def train(ctx, params: TinyParams) -> None:
    for epoch, loss, state in _linear_epochs(ctx, params):
        ctx.report({"epoch": epoch, "loss": loss}, state=state)


def _linear_epochs(ctx, params: TinyParams):
    """A tiny linear model fitted for ``params.epochs`` epochs: (epoch, loss, checkpoint state) each."""
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x @ torch.arange(8.0) + 1.0
    model = ctx.prepare_model(torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=params.lr)
    for epoch in range(params.epochs):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
        loss.backward()
        optimizer.step()
        yield epoch, loss.item(), {"epoch": epoch, "model": getattr(model, "module", model).state_dict()}


class LongParams(TinyParams):
    checkpoint_every: int = Field(1000, ge=1)


long = Pipeline("long", description="One tiny train step of many epochs: the run's event log at length.")


@long.train(params=LongParams, name="train")
def train_long(ctx, params: LongParams) -> None:
    for epoch, loss, state in _linear_epochs(ctx, params):
        last = epoch == params.epochs - 1
        keep = last or (epoch + 1) % params.checkpoint_every == 0
        ctx.report({"epoch": epoch, "loss": loss}, state=state if keep else None)


mapped = Pipeline("mapped", description=f"One source with {STEPS} items, a step mapped over them, a fan-in.")


@mapped.task(name="source")
def _items(ctx) -> Output:
    return Output(items=list(range(STEPS)))


@mapped.task(name="work", map_over="source")
def _work(ctx) -> dict[str, float]:
    return {"value": 1.0 + ctx.item}


@mapped.task(name="sink")
def _sink(ctx, work) -> dict[str, float]:
    return {"value": sum(artifact.metrics["value"] for artifact in work)}
