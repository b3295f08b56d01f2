"""The synthetic pipeline: prepare → train (DDP, streamed) → evaluate, at any size.

A driver program to copy when the data does not fit in one process. ``prepare`` generates a
classification dataset of ``rows`` rows with Ray Data and stores it as Parquet parts, written in
parallel and never gathered. ``train`` declares the datasets it streams: every worker gets a
shard per epoch through Ray Data, so a worker's memory stays flat however large the data is.
``evaluate`` streams the test split a batch at a time. Run it with
``rto run configs/synthetic.yaml --set prepare.params.rows=1000000``.
"""

from __future__ import annotations

import resource
import threading
import time

import numpy as np
import pyarrow.compute as pc
import ray.data
import torch
import torch.distributed as dist
from pydantic import Field

from raytrain_orch import Artifact, Output, Params, Pipeline, StepContext

pipeline = Pipeline("synthetic", description="Classify synthetic rows streamed from Parquet parts with Ray Data.")

FEATURES = [f"x{i}" for i in range(16)]
CLASSES = 4


class Net(torch.nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(len(FEATURES), hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, CLASSES)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def features(batch: dict) -> torch.Tensor:
    """A batch's feature columns (tensors, or numpy arrays) as one (rows, features) tensor."""
    if isinstance(batch[FEATURES[0]], np.ndarray):
        return torch.from_numpy(np.column_stack([batch[name] for name in FEATURES]).astype(np.float32))
    return torch.stack([batch[name].float() for name in FEATURES], dim=1)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB). It counts the pages of
    Ray's shared object store the process has read blocks from, too."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PrivateMemory:
    """The peak of this process's own memory (resident minus shared pages: not the object
    store's), sampled every ``every_s`` on a thread."""

    def __init__(self, every_s: float = 0.2):
        import psutil

        self._process, self._every_s, self.peak_mb = psutil.Process(), every_s, 0.0
        self._stop = threading.Event()
        threading.Thread(target=self._sample, name="private-memory", daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(self._every_s):
            info = self._process.memory_info()
            self.peak_mb = max(self.peak_mb, (info.rss - info.shared) / 2**20)

    def stop(self) -> None:
        self._stop.set()


# --- prepare ---------------------------------------------------------------------------------


class PrepareParams(Params):
    rows: int = Field(100_000, ge=1_000, description="Rows of the training split.")
    rows_per_part: int = Field(100_000, ge=1_000, description="Rows per generated block (one Parquet part or more).")
    holdout_fraction: float = Field(0.1, gt=0, lt=0.5, description="Size of the val and of the test split, each.")
    noise: float = Field(0.5, ge=0, description="Label noise: how far the data is from separable.")
    seed: int = Field(0, description="Seed of the teacher and of every block.")


def teacher(seed: int) -> np.ndarray:
    """The fixed linear map whose argmax labels the rows."""
    return np.random.default_rng(seed).normal(size=(len(FEATURES), CLASSES))


def generate(batch: dict[str, np.ndarray], seed: int, noise: float) -> dict[str, np.ndarray]:
    """Rows for the ids of ``batch``: the same ids give the same rows, in any block or process."""
    ids = batch["id"]
    rng = np.random.default_rng([seed, int(ids[0])])
    x = rng.normal(size=(len(ids), len(FEATURES))).astype(np.float32)
    logits = x @ teacher(seed) + noise * rng.normal(size=(len(ids), CLASSES))
    return {"id": ids, **{name: x[:, i] for i, name in enumerate(FEATURES)}, "label": logits.argmax(axis=1)}


def split(params: PrepareParams, rows: int, first_id: int) -> ray.data.Dataset:
    blocks = max(1, -(-rows // params.rows_per_part))
    ids = ray.data.range(rows, override_num_blocks=blocks)
    return ids.map_batches(
        lambda batch: generate({"id": batch["id"] + first_id}, params.seed, params.noise), batch_format="numpy"
    )


@pipeline.task(params=PrepareParams)
def prepare(ctx: StepContext, params: PrepareParams) -> Output:
    """Generate the train, val and test splits; Ray Data writes each as Parquet parts."""
    holdout = max(1_000, int(params.rows * params.holdout_fraction))
    return Output(
        datasets={
            "train": split(params, params.rows, 0),
            "val": split(params, holdout, params.rows),
            "test": split(params, holdout, params.rows + holdout),
        },
        metrics={"rows_train": params.rows, "rows_val": holdout, "rows_test": holdout},
    )


# --- train (runs on every DDP worker) --------------------------------------------------------


class TrainParams(Params):
    epochs: int = Field(3, ge=1, description="Passes over the training split.")
    hidden: int = Field(64, ge=1, description="Width of the hidden layer.")
    lr: float = Field(0.01, gt=0, description="Adam learning rate.")
    batch_size: int = Field(1024, ge=1, description="Batch size per worker.")
    stream: bool = Field(True, description="Stream shards with Ray Data; false: read the whole split into memory.")
    seed: int = Field(0, description="Seed of the weights.")


@pipeline.train(params=TrainParams, datasets=["prepare.train", "prepare.val"])
def train(ctx, params: TrainParams, prepare: Artifact) -> None:
    torch.manual_seed(params.seed)
    model = ctx.prepare_model(Net(params.hidden))
    plain = getattr(model, "module", model)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr)
    start, state = 0, ctx.restore()
    if state is not None:  # resumed after a failure: continue after the checkpointed epoch
        plain.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"] + 1

    memory = PrivateMemory()
    loader = None if params.stream else in_memory_loader(ctx, params, prepare)
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(start, params.epochs):
        model.train()
        seen, total, batches = 0, 0.0, 0
        if loader is not None:
            loader.sampler.set_epoch(epoch)
        shard = ctx.dataset_shard("train").iter_torch_batches(batch_size=params.batch_size) if loader is None else None
        began = time.perf_counter()
        for batch in shard if shard is not None else loader:
            x, y = (features(batch), batch["label"].long()) if shard is not None else batch
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            seen, total, batches = seen + len(y), total + loss.item(), batches + 1
        speed = round(seen * ctx.world_size / (time.perf_counter() - began), 1)  # the training loop's alone
        metrics = {
            "epoch": epoch,
            "loss": total / max(batches, 1),
            "train_samples_per_s": speed,
            **validate(ctx, plain, params.batch_size, memory),
        }
        ctx.report(
            metrics,
            state={
                "epoch": epoch,
                "hidden": params.hidden,
                "model": plain.state_dict(),
                "optimizer": optimizer.state_dict(),
            },
            samples=seen * ctx.world_size,
        )


def in_memory_loader(ctx, params: TrainParams, prepare: Artifact) -> torch.utils.data.DataLoader:
    """The whole training split in this worker's memory, sharded by a DistributedSampler: the
    way to compare streaming against, at a size where both fit."""
    table = prepare.read_dataset("train").to_table(columns=[*FEATURES, "label"])
    x = features({name: table[name].to_numpy() for name in FEATURES})  # one copy: the (rows, features) matrix
    y = torch.from_numpy(table["label"].to_numpy()).long()
    dataset = torch.utils.data.TensorDataset(x, y)
    return ctx.prepare_data_loader(torch.utils.data.DataLoader(dataset, batch_size=params.batch_size, shuffle=True))


def validate(ctx, model: torch.nn.Module, batch_size: int, memory: PrivateMemory) -> dict[str, float]:
    """Accuracy on the val split, each worker on its shard, summed over workers; and the largest
    peak memory of any worker so far."""
    model.eval()
    counts = torch.zeros(4, dtype=torch.float64)  # correct, rows, peak RSS, peak private memory
    with torch.no_grad():
        for batch in ctx.dataset_shard("val").iter_torch_batches(batch_size=batch_size):
            counts[0] += (model(features(batch)).argmax(dim=1) == batch["label"]).sum().item()
            counts[1] += len(batch["label"])
    counts[2], counts[3] = peak_rss_mb(), memory.peak_mb
    if ctx.world_size > 1:
        totals, peak = counts[:2].clone(), counts[2:].clone()
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        counts = torch.cat([totals, peak])
    return {
        "val_accuracy": float(counts[0] / max(counts[1].item(), 1)),
        "peak_rss_mb": round(float(counts[2]), 1),
        "peak_private_mb": round(float(counts[3]), 1),
    }


# --- evaluate --------------------------------------------------------------------------------


@pipeline.task
def evaluate(ctx: StepContext, prepare: Artifact, train: Artifact) -> dict[str, float]:
    """Test accuracy, streaming the test split a batch at a time."""
    state = train.load_state()
    model = Net(state["hidden"])
    model.load_state_dict(state["model"])
    model.eval()
    correct = rows = 0
    with torch.no_grad():
        for batch in prepare.read_dataset("test").to_batches(columns=[*FEATURES, "label"], batch_size=65_536):
            x = features({name: batch.column(name).to_numpy() for name in FEATURES})
            labels = torch.from_numpy(pc.cast(batch.column("label"), "int64").to_numpy(zero_copy_only=False).copy())
            correct += int((model(x).argmax(dim=1) == labels).sum())
            rows += batch.num_rows
    return {"test_accuracy": correct / rows}
