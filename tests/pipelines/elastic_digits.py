"""The digits pipeline with an elastic train loop, for the elastic e2e test: prepare and
evaluate are digits' own; train takes its batch size and learning rate from the step's
``scaling.on_resize`` rule (``ctx.batch_size``, ``ctx.scaled_lr``) and paces each epoch
(``epoch_s``), so a node can be lost, added and drained while it trains. ``stop_file`` lets the
test end training once it has seen what it waits for, instead of sitting out a fixed count."""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
from pydantic import Field

from jobs import digits
from raytrain_orch import Artifact, Params, Pipeline

pipeline = Pipeline("elastic_digits", description="digits, trained by an elastic worker group")
pipeline.task(params=digits.PrepareParams)(digits.prepare)
pipeline.task(digits.evaluate)


class TrainParams(Params):
    epochs: int = Field(100, ge=1)
    hidden: int = Field(128, ge=1)
    lr: float = Field(0.05, gt=0, description="The learning rate at the largest world size.")
    global_batch: int = Field(64, ge=1, description="The batch of all workers together.")
    epoch_s: float = Field(0.5, ge=0, description="Each epoch also waits this long (the pace of the test).")
    stop_file: str | None = Field(None, description="Once this file exists, the epoch at hand is the last.")


@pipeline.train(params=TrainParams)
def train(ctx, params: TrainParams, prepare: Artifact) -> None:
    torch.manual_seed(0)
    x, y = digits.to_tensors(prepare.read_table("train"))
    x_val, y_val = digits.to_tensors(prepare.read_table("val"))
    dataset = torch.utils.data.TensorDataset(x, y)
    loader = ctx.prepare_data_loader(
        torch.utils.data.DataLoader(dataset, batch_size=ctx.batch_size(params.global_batch), shuffle=True)
    )
    model = ctx.prepare_model(digits.MLP(params.hidden))
    plain = getattr(model, "module", model)
    optimizer = torch.optim.SGD(model.parameters(), lr=ctx.scaled_lr(params.lr), momentum=0.9)
    state = ctx.restore()
    start = 0
    if state is not None:
        plain.load_state_dict(state["model"])
        start = state["epoch"] + 1
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(start, params.epochs):
        if ctx.world_size > 1:
            loader.sampler.set_epoch(epoch)
        model.train()
        for features, labels in loader:
            optimizer.zero_grad()
            loss_fn(model(features), labels).backward()
            optimizer.step()
        time.sleep(params.epoch_s)
        ctx.report(
            {"epoch": epoch, "val_accuracy": digits.accuracy(plain, x_val, y_val)},
            state={"epoch": epoch, "hidden": params.hidden, "model": plain.state_dict()},
        )
        if params.stop_file and _agreed(os.path.exists(params.stop_file), ctx.world_size):
            break


def _agreed(stop: bool, world_size: int) -> bool:
    """Whether any rank saw the stop, as every rank sees it (no rank enters an epoch alone)."""
    if world_size == 1:
        return stop
    flag = torch.tensor([float(stop)])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
