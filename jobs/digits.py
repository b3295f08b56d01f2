"""The digits pipeline: prepare → train (DDP) → evaluate → register.

A driver program to copy: each step is a plain function; its parameters name what it needs
(``ctx``, its ``params``, and upstream steps' artifacts by step name). Run it with
``rto run configs/digits.yaml``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field

from raytrain_orch import Artifact, Output, Params, Pipeline, StepContext

pipeline = Pipeline("digits", description="Classify 8×8 handwritten digits with a DDP-trained MLP.")

FEATURES = [f"p{i}" for i in range(64)]


class MLP(torch.nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def to_tensors(table: pa.Table) -> tuple[torch.Tensor, torch.Tensor]:
    features = np.column_stack([table[name].to_numpy() for name in FEATURES]).astype(np.float32)
    return torch.from_numpy(features), torch.from_numpy(table["label"].to_numpy().astype(np.int64))


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


# --- prepare ---------------------------------------------------------------------------------


class PrepareParams(Params):
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="Share of the data held out for validation.")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="Share of the data held out for the final test.")
    seed: int = Field(0, description="Seed of the stratified split.")


@pipeline.task(params=PrepareParams)
def prepare(ctx: StepContext, params: PrepareParams) -> Output:
    """Load scikit-learn's digits, split stratified, standardise with train statistics."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=params.test_fraction, stratify=y, random_state=params.seed
    )
    val_share = params.val_fraction / (1 - params.test_fraction)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_share, stratify=y_rest, random_state=params.seed
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0

    def table(features: np.ndarray, labels: np.ndarray) -> pa.Table:
        scaled = ((features - mean) / std).astype(np.float32)
        return pa.table({**{name: scaled[:, i] for i, name in enumerate(FEATURES)}, "label": labels.astype(np.int64)})

    tables = {"train": table(x_train, y_train), "val": table(x_val, y_val), "test": table(x_test, y_test)}
    return Output(tables=tables, metrics={f"rows_{name}": t.num_rows for name, t in tables.items()})


# --- train (runs on every DDP worker) --------------------------------------------------------


class TrainParams(Params):
    epochs: int = Field(20, ge=1, description="Passes over the training split.")
    hidden: int = Field(128, ge=1, description="Width of the hidden layer.")
    lr: float = Field(0.05, gt=0, description="SGD learning rate (momentum 0.9).")
    batch_size: int = Field(64, ge=1, description="Batch size per worker.")
    seed: int = Field(0, description="Seed of weights and shuffling.")


@pipeline.train(params=TrainParams)
def train(ctx, params: TrainParams, prepare: Artifact) -> None:
    torch.manual_seed(params.seed)
    x, y = to_tensors(prepare.read_table("train"))
    x_val, y_val = to_tensors(prepare.read_table("val"))
    loader = ctx.prepare_data_loader(
        torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=params.batch_size, shuffle=True)
    )
    model = ctx.prepare_model(MLP(params.hidden))
    plain = getattr(model, "module", model)
    optimizer = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=0.9)

    start = 0
    state = ctx.restore()
    if state is not None:  # resumed after a failure: continue after the checkpointed epoch
        plain.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"] + 1

    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(start, params.epochs):
        if ctx.world_size > 1:
            loader.sampler.set_epoch(epoch)
        model.train()
        total, batches = 0.0, 0
        for features, labels in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(features), labels)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        val_accuracy = accuracy(plain, x_val.to(ctx.device), y_val.to(ctx.device))
        ctx.report(
            {"epoch": epoch, "loss": total / max(batches, 1), "val_accuracy": val_accuracy},
            state={
                "epoch": epoch,
                "hidden": params.hidden,
                "model": plain.state_dict(),
                "optimizer": optimizer.state_dict(),
            },
        )


def load_model(train: Artifact) -> MLP:
    state = train.load_state()
    model = MLP(state["hidden"])
    model.load_state_dict(state["model"])
    return model.eval()


# --- evaluate --------------------------------------------------------------------------------


@pipeline.task
def evaluate(ctx: StepContext, prepare: Artifact, train: Artifact) -> dict[str, float]:
    """Test accuracy on the held-out split, and a confusion matrix PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

    model = load_model(train)
    x, y = to_tensors(prepare.read_table("test"))
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
    test_accuracy = (predicted == y).float().mean().item()

    figure, axes = plt.subplots(figsize=(6, 6))
    ConfusionMatrixDisplay(confusion_matrix(y.numpy(), predicted.numpy(), labels=list(range(10)))).plot(
        ax=axes, colorbar=False
    )
    axes.set_title(f"digits — test accuracy {test_accuracy:.3f}")
    figure.savefig(ctx.output_dir / "confusion_matrix.png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return {"test_accuracy": test_accuracy}


# --- register --------------------------------------------------------------------------------


class RegisterParams(Params):
    model_name: str = Field("digits", min_length=1, description="Registered model name in MLflow.")
    min_test_accuracy: float = Field(0.0, ge=0, le=1, description="Register only at or above this test accuracy.")


@pipeline.task(params=RegisterParams)
def register(
    ctx: StepContext, params: RegisterParams, prepare: Artifact, train: Artifact, evaluate: Artifact
) -> dict[str, float]:
    """Log the trained model with mlflow.pytorch (input example: real test rows), register it with
    its test metrics, and (config ``mlflow.champion``) make it the champion if it is the best yet."""
    if evaluate.metrics["test_accuracy"] < params.min_test_accuracy:
        return {"registered_version": 0.0}
    example = to_tensors(prepare.read_table("test").slice(0, 5))[0].numpy()
    registered = ctx.register_model(
        load_model(train), params.model_name, input_example=example, metrics=evaluate.metrics
    )
    if registered is None:  # the step has no MLflow run
        return {"registered_version": 0.0}
    return {"registered_version": float(registered.version), "champion": float(registered.alias is not None)}
