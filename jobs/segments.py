"""The segments pipeline: one model per segment of the data, the best one registered if it is good.

    prepare ──► fit (one DDP model per segment) ──► evaluate (each) ──► pick (fan-in) ──► register (when good)

``prepare`` splits scikit-learn's digits into segments by how much ink a digit has (light,
medium, heavy: thirds of the training set) and returns them as its ``items``. ``fit`` is mapped
over them: one DDP train step per segment, each with its own gang, attempts, cache entry and
MLflow run. ``evaluate`` is mapped too, and takes every segment's model (a fan-in, in item
order), using its own. ``pick`` takes every evaluation and chooses the best segment's model;
``register`` runs only ``when`` that model clears ``REGISTER_AT``. Run it with
``rto run configs/segments.yaml``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import Field

from jobs.digits import FEATURES, MLP, accuracy, to_tensors
from raytrain_orch import Artifact, Output, Params, Pipeline, StepContext

pipeline = Pipeline("segments", description="One digits model per ink segment; the best one registered.")

#: The best segment's model is registered only at or above this test accuracy on its own segment.
REGISTER_AT = 0.9
SEGMENTS = ["light", "medium", "heavy"]


class PrepareParams(Params):
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="Share of the data held out for the final test.")
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="Share of the data held out for validation.")
    seed: int = Field(0, description="Seed of the stratified split.")


@pipeline.task(params=PrepareParams)
def prepare(ctx: StepContext, params: PrepareParams) -> Output:
    """Split and standardise the digits; tag each row with its ink segment; the segments are the items."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=params.test_fraction, stratify=y, random_state=params.seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=params.val_fraction / (1 - params.test_fraction), stratify=y_rest, random_state=0
    )
    edges = np.quantile(x_train.sum(axis=1), [1 / 3, 2 / 3])  # thirds of the training set by ink
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0

    def table(features: np.ndarray, labels: np.ndarray) -> pa.Table:
        scaled = ((features - mean) / std).astype(np.float32)
        bands = np.digitize(features.sum(axis=1), edges)
        columns = {name: scaled[:, i] for i, name in enumerate(FEATURES)}
        return pa.table({**columns, "label": labels.astype(np.int64), "segment": [SEGMENTS[b] for b in bands]})

    tables = {"train": table(x_train, y_train), "val": table(x_val, y_val), "test": table(x_test, y_test)}
    return Output(tables=tables, items=SEGMENTS, metrics={"segments": float(len(SEGMENTS))})


def rows(prepare: Artifact, split: str, segment: str) -> tuple[torch.Tensor, torch.Tensor]:
    table = prepare.read_table(split)
    return to_tensors(table.filter(pc.equal(table["segment"], segment)))


class FitParams(Params):
    epochs: int = Field(15, ge=1, description="Passes over the segment's training rows.")
    hidden: int = Field(64, ge=1, description="Width of the hidden layer.")
    lr: float = Field(0.05, gt=0, description="SGD learning rate (momentum 0.9).")
    batch_size: int = Field(32, ge=1, description="Batch size per worker.")


@pipeline.train(map_over="prepare", params=FitParams)
def fit(ctx, params: FitParams, prepare: Artifact) -> None:
    """A DDP model of one segment (``ctx.item``), checkpointed every epoch."""
    torch.manual_seed(ctx.item_index)
    x, y = rows(prepare, "train", ctx.item)
    x_val, y_val = rows(prepare, "val", ctx.item)
    loader = ctx.prepare_data_loader(
        torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=params.batch_size, shuffle=True)
    )
    model = ctx.prepare_model(MLP(params.hidden))
    plain = getattr(model, "module", model)
    optimizer = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=0.9)
    state = ctx.restore()
    if state is not None:
        plain.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(state["epoch"] + 1 if state else 0, params.epochs):
        if ctx.world_size > 1:
            loader.sampler.set_epoch(epoch)
        model.train()
        for features, labels in loader:
            optimizer.zero_grad()
            loss_fn(model(features), labels).backward()
            optimizer.step()
        val_accuracy = accuracy(plain, x_val, y_val)
        state = {
            "epoch": epoch,
            "hidden": params.hidden,
            "model": plain.state_dict(),
            "optimizer": optimizer.state_dict(),
        }
        ctx.report({"epoch": epoch, "val_accuracy": val_accuracy, "rows": float(len(y))}, state=state)


def load_model(fit: Artifact) -> MLP:
    state = fit.load_state()
    model = MLP(state["hidden"])
    model.load_state_dict(state["model"])
    return model.eval()


@pipeline.task(map_over="prepare")
def evaluate(ctx: StepContext, prepare: Artifact, fit: list[Artifact]) -> dict[str, float]:
    """Test accuracy of this segment's model (``fit``, one artifact per segment) on its own segment."""
    model = load_model(fit[ctx.item_index])
    x, y = rows(prepare, "test", ctx.item)
    return {"test_accuracy": accuracy(model, x, y), "test_rows": float(len(y))}


@pipeline.task
def pick(ctx: StepContext, prepare: Artifact, evaluate: list[Artifact]) -> Output:
    """The segment whose model tests best (a fan-in over every evaluation)."""
    scores = [e.metrics["test_accuracy"] for e in evaluate]
    best = int(np.argmax(scores))
    metrics = {"best_index": float(best), "best_test_accuracy": scores[best]}
    metrics.update({f"test_accuracy_{name}": score for name, score in zip(prepare.items, scores, strict=True)})
    return Output(metrics=metrics, items=[prepare.items[best]])


class RegisterParams(Params):
    model_name: str = Field("digits-segment", min_length=1, description="Registered model name in MLflow.")


@pipeline.task(params=RegisterParams, when=lambda pick: pick.metrics["best_test_accuracy"] >= REGISTER_AT)
def register(
    ctx: StepContext, params: RegisterParams, prepare: Artifact, fit: list[Artifact], pick: Artifact
) -> dict[str, float]:
    """Register the best segment's model, only when it clears ``REGISTER_AT``."""
    model = load_model(fit[int(pick.metrics["best_index"])])
    example = to_tensors(prepare.read_table("test").slice(0, 5))[0].numpy()
    metrics = {"test_accuracy": pick.metrics["best_test_accuracy"]}
    registered = ctx.register_model(model, params.model_name, input_example=example, metrics=metrics)
    return {"registered_version": float(registered.version) if registered is not None else 0.0}
