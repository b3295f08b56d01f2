"""Pipelines whose gangs fill the cluster, for the admission and placement tests.

- ``three``: three independent DDP train steps of 2 workers each (the whole of a 2-CPU cluster each).
- ``whole``: a small task, then one DDP train step that needs the whole cluster.
- ``spread``: one task step whose gang has several bundles; it runs a probe task in each bundle
  and stores where each one ran as a Parquet table.
- ``gpus``: a task step on a (logical) GPU that reports the GPU id Ray gave it.
- ``failing``: a task step that raises.
- ``one``, ``pair``: one, or two independent, paced train steps (the queue and preemption tests).

Train steps all-reduce a bit per GPU id Ray gave each rank, so a test can tell that a gang of
GPU workers got distinct GPUs.
"""

from __future__ import annotations

import time

import pyarrow as pa
import ray
import torch
import torch.distributed as dist
from pydantic import Field
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from raytrain_orch import Output, Params, Pipeline, StepContext


class TrainParams(Params):
    epochs: int = Field(1, ge=1)
    seconds_per_epoch: float = Field(0.0, ge=0)


def ddp_loop(ctx, params: TrainParams) -> None:
    """All-reduce each rank's GPU ids (or none) per epoch; report when this worker group ran."""
    started = time.time()
    state = ctx.restore()
    for epoch in range(state["epoch"] + 1 if state else 0, params.epochs):
        time.sleep(params.seconds_per_epoch)
        ones = torch.ones(1)
        dist.all_reduce(ones)  # every rank takes part: the whole gang is up
        gpu = float(ray.get_gpu_ids()[0]) if ray.get_gpu_ids() else -1.0
        gpus = torch.tensor([2.0**gpu if gpu >= 0 else 0.0])
        dist.all_reduce(gpus)  # a bit per GPU id: distinct ids add up to distinct bits
        metrics = {
            "epoch": epoch,
            "world": float(ones.item()),
            "gpu_bits": float(gpus.item()),
            "started": started,
            "ended": time.time(),
        }
        ctx.report(metrics, state={"epoch": epoch})


three = Pipeline("three")
for index in range(3):
    three.train(ddp_loop, name=f"train{index}", params=TrainParams)


whole = Pipeline("whole")


@whole.task
def first(ctx: StepContext) -> dict[str, float]:
    return {"at": time.time()}


@whole.train(params=TrainParams)
def train(ctx, params: TrainParams, first) -> None:
    ddp_loop(ctx, params)


class SpreadParams(Params):
    cpus_per_probe: float = Field(0.0, ge=0)


@ray.remote(num_cpus=0)
def _where() -> str:
    return ray.get_runtime_context().get_node_id()


spread = Pipeline("spread")


@spread.task(params=SpreadParams)
def probe(ctx: StepContext, params: SpreadParams) -> Output:
    """Run one probe task in each bundle of this step's gang; store the node of each."""
    group = get_current_placement_group()
    nodes = ray.get(
        [
            _where.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i)
            ).remote()
            for i in range(len(group.bundle_specs))
        ]
    )
    table = pa.table({"bundle": list(range(len(nodes))), "node_id": nodes})
    return Output(tables={"placement": table}, metrics={"distinct_nodes": float(len(set(nodes)))})


gpus = Pipeline("gpus")


@gpus.task
def gpu_task(ctx: StepContext) -> dict[str, float]:
    ids = ray.get_gpu_ids()
    return {"gpus_seen": float(len(ids)), "gpu_id": float(ids[0]) if ids else -1.0}


failing = Pipeline("failing")


@failing.task
def broken(ctx: StepContext) -> None:
    raise ValueError("this step always fails")


one = Pipeline("one")  # one paced DDP train step (the preemption tests)
one.train(ddp_loop, name="train", params=TrainParams)

pair = Pipeline("pair")  # two independent paced train steps: one team's two gangs at once
for index in range(2):
    pair.train(ddp_loop, name=f"train{index}", params=TrainParams)


class LongParams(Params):
    epochs: int = Field(2, ge=1)
    batches: int = Field(10, ge=1)
    seconds_per_batch: float = Field(0.3, ge=0)


def long_epochs_loop(ctx, params: LongParams) -> None:
    """Epochs too long to wait for: asks ``ctx.should_checkpoint()`` after every batch and, when it
    says so, reports there (checkpointing the batch reached); resumes after that batch."""
    state = ctx.restore()
    epoch, batch = (state["epoch"], state["batch"] + 1) if state else (0, 0)
    while epoch < params.epochs:
        while batch < params.batches:
            time.sleep(params.seconds_per_batch)
            dist.all_reduce(torch.ones(1))
            if ctx.should_checkpoint():
                ctx.report({"epoch": epoch, "batch": batch}, state={"epoch": epoch, "batch": batch})
            batch += 1
        ctx.report({"epoch": epoch, "batch": batch - 1}, state={"epoch": epoch, "batch": batch - 1})
        epoch, batch = epoch + 1, 0


long_epochs = Pipeline("long_epochs")  # one train step whose epochs are long (ctx.should_checkpoint)
long_epochs.train(long_epochs_loop, name="train", params=LongParams)
