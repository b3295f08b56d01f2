"""digits with a sharded train step, for the large-model tests: prepare and evaluate are
digits' own (evaluate reads the consolidated checkpoint through ``train.load_state()``); train
holds its model as blocks in a ``ModuleList`` (FSDP2 shards each), checkpoints the live model
and optimizer every epoch and restores into them on any world size. ``epoch_s`` paces it for
kills; ``dump_dir`` writes the whole parameters as restored and as last reported, so a test can
compare them across world sizes."""

from __future__ import annotations

import os
import time

import torch
from pydantic import Field
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from jobs import digits
from raytrain_orch import Artifact, Params, Pipeline

pipeline = Pipeline("sharded", description="digits, trained by a sharded (FSDP) worker group")
pipeline.task(params=digits.PrepareParams)(digits.prepare)


class BlockNet(torch.nn.Module):
    def __init__(self, hidden: int, blocks: int):
        super().__init__()
        self.stem = torch.nn.Linear(64, hidden)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.LayerNorm(hidden), torch.nn.Linear(hidden, hidden), torch.nn.GELU())
            for _ in range(blocks)
        )
        self.head = torch.nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


class TrainParams(Params):
    epochs: int = Field(8, ge=1)
    hidden: int = Field(64, ge=1)
    blocks: int = Field(2, ge=1)
    lr: float = Field(3e-3, gt=0)
    global_batch: int = Field(64, ge=1)
    epoch_s: float = Field(0.0, ge=0, description="Each epoch also waits this long (the pace of the test).")
    dump_dir: str | None = Field(
        None, description="Write the whole parameters here: restored-WORLD.pt, final-WORLD.pt."
    )


@pipeline.train(params=TrainParams)
def train(ctx, params: TrainParams, prepare: Artifact) -> None:
    torch.manual_seed(0)
    x, y = digits.to_tensors(prepare.read_table("train"))
    x_val, y_val = digits.to_tensors(prepare.read_table("val"))
    model = ctx.prepare_model(BlockNet(params.hidden, params.blocks))
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr)
    values = ctx.restore({"model": model, "optimizer": optimizer})
    if values is not None:
        _dump(ctx, model, params.dump_dir, f"restored-{values['epoch']}-on-{ctx.world_size}.pt")
    start = values["epoch"] + 1 if values else 0
    batch = ctx.batch_size(params.global_batch)
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(start, params.epochs):
        generator = torch.Generator().manual_seed(epoch * 1000 + ctx.rank)
        order = torch.randperm(len(x), generator=generator)[: batch * 10]  # 10 steps an epoch, every rank
        model.train()
        for index in order.split(batch):
            optimizer.zero_grad()
            loss_fn(model(x[index]), y[index]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_accuracy = (model(x_val).argmax(dim=1) == y_val).float().mean().item()
        time.sleep(params.epoch_s)
        ctx.report(
            {"epoch": epoch, "val_accuracy": val_accuracy},
            state={
                "model": model,
                "optimizer": optimizer,
                "epoch": epoch,
                "hidden": params.hidden,
                "blocks": params.blocks,
            },
        )
    _dump(ctx, model, params.dump_dir, f"saved-{params.epochs - 1}-by-{ctx.world_size}.pt")


def _dump(ctx, model: torch.nn.Module, directory: str | None, name: str) -> None:
    """Every rank gathers the whole parameters (a collective); rank 0 writes them."""
    if directory is None:
        return
    whole = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if ctx.rank == 0:
        os.makedirs(directory, exist_ok=True)
        torch.save(whole, os.path.join(directory, name))


def load_model(train: Artifact) -> BlockNet:
    state = train.load_state()  # the sharded checkpoint, consolidated on this process
    model = BlockNet(state["hidden"], state["blocks"])
    model.load_state_dict(state["model"])
    return model.eval()


@pipeline.task
def evaluate(ctx, prepare: Artifact, train: Artifact) -> dict[str, float]:
    x, y = digits.to_tensors(prepare.read_table("test"))
    with torch.no_grad():
        return {"test_accuracy": (load_model(train)(x).argmax(dim=1) == y).float().mean().item()}
