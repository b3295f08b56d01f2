"""The digits pipeline's work with no orchestrator: the baseline every overhead is measured against.

The same work as ``rto run configs/digits.yaml``, written the plain PyTorch way:

- the same data preparation (scikit-learn's digits, the same stratified splits and seed,
  standardised with the training split's statistics);
- the same MLP, SGD with momentum 0.9, per-worker batch size and seeds;
- DDP over gloo on the same number of processes, started with ``torch.multiprocessing``;
- a checkpoint per epoch (model and optimizer state, the newest two kept), written by rank 0;
- test accuracy of the final model at the end.

Three options, off by default, serve ``bench/tracking_overhead.py``: ``--mlflow URI`` logs each
epoch's metrics the usual way (rank 0 calls ``mlflow.log_metrics`` synchronously, into one MLflow
run), ``--usage-sample-s S`` runs the run report's usage sampler in every worker (sampling every
S seconds, its records dropped), and ``--timings-out FILE`` writes rank 0's per-epoch timings as JSON.

Without ``--usage-sample-s`` it imports nothing of ``raytrain_orch``. Run it alone::

    .venv/bin/python bench/plain_digits.py --epochs 20 --json

It prints one JSON line: wall time and its parts, and the accuracies.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import tempfile
import time
from pathlib import Path

START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

IMPORTED = time.perf_counter()


class MLP(torch.nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def prepare(
    val_fraction: float = 0.15, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)
    val_share = val_fraction / (1 - test_fraction)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_share, stratify=y_rest, random_state=seed
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0

    def tensors(features: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(((features - mean) / std).astype(np.float32)), torch.from_numpy(labels.astype(np.int64))

    return {"train": tensors(x_train, y_train), "val": tensors(x_val, y_val), "test": tensors(x_test, y_test)}


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def worker(rank: int, world: int, port: int, args: argparse.Namespace, data: dict, out: Path, results: dict) -> None:
    torch.set_num_threads(1)  # one CPU per process, as Ray gives each DDP worker
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    mlflow = _start_mlflow_run(args.mlflow) if rank == 0 and args.mlflow else None
    samples: list[dict] = []
    usage = _start_usage_sampler(rank, args.usage_sample_s, samples) if args.usage_sample_s else None
    ready = time.perf_counter()
    ends, log_s = [ready], []  # rank 0: when each epoch ended (the barrier passed); time in mlflow.log_metrics
    torch.manual_seed(args.seed)
    x, y = data["train"]
    x_val, y_val = data["val"]
    dataset = torch.utils.data.TensorDataset(x, y)
    sampler = torch.utils.data.distributed.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)
    model = torch.nn.parallel.DistributedDataParallel(MLP(args.hidden))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    val_accuracy = 0.0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        for features, labels in loader:
            optimizer.zero_grad()
            loss_fn(model(features), labels).backward()
            optimizer.step()
        val_accuracy = accuracy(model.module, x_val, y_val)
        if mlflow is not None:
            began = time.perf_counter()
            epoch_s = began - ends[-1]
            mlflow.log_metrics(
                {
                    "epoch": epoch,
                    "val_accuracy": val_accuracy,
                    "epoch_time_s": epoch_s,
                    "throughput_samples_per_s": len(dataset) / epoch_s,
                },
                step=epoch,
            )
            log_s.append(time.perf_counter() - began)
        if rank == 0:  # a checkpoint per epoch, the newest two kept
            path = out / f"checkpoint_{epoch:06d}.pt"
            torch.save(
                {
                    "epoch": epoch,
                    "hidden": args.hidden,
                    "model": model.module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                },
                path,
            )
            (out / f"checkpoint_{epoch - 2:06d}.pt").unlink(missing_ok=True)
        dist.barrier()  # the next epoch starts when the checkpoint is down, as with a synchronous report
        ends.append(time.perf_counter())
    if usage is not None:
        usage.stop()
    if rank == 0:
        results.update(val_accuracy=val_accuracy, loop_s=time.perf_counter() - ready)
        if args.timings_out:
            epoch_s = [b - a for a, b in itertools.pairwise(ends)]  # the first includes the loop's set-up
            timings = {"epoch_s": epoch_s, "log_s": log_s, "usage_samples": len(samples)}
            Path(args.timings_out).write_text(json.dumps(timings))
    if mlflow is not None:
        mlflow.end_run()
    dist.destroy_process_group()


def _start_usage_sampler(rank: int, interval_s: float, samples: list[dict]):
    """The sampler every rto train worker runs (raytrain_orch.ray.usage), its records kept in ``samples``."""
    from raytrain_orch.ray.usage import UsageSampler

    return UsageSampler(lambda event, **fields: samples.append(fields), rank=rank, interval_s=interval_s).start()


def _start_mlflow_run(tracking_uri: str):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("plain-digits")
    mlflow.start_run()
    return mlflow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--checkpoints", help="directory for checkpoints (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument(
        "--mlflow",
        metavar="URI",
        help="log each epoch's metrics from rank 0 with mlflow.log_metrics to this tracking URI",
    )
    parser.add_argument(
        "--usage-sample-s",
        type=float,
        metavar="S",
        help="run rto's usage sampler in every worker, sampling every S seconds (the run report's)",
    )
    parser.add_argument(
        "--timings-out", metavar="FILE", help="write rank 0's per-epoch times (epoch_s, log_s) here as JSON"
    )
    args = parser.parse_args()

    data = prepare()
    prepared = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="plain-digits-") as scratch:
        out = Path(args.checkpoints or scratch)
        out.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:  # a free port for the process group's rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        results = mp.Manager().dict()
        mp.spawn(worker, args=(args.workers, port, args, data, out, results), nprocs=args.workers, join=True)
        trained = time.perf_counter()
        final = torch.load(max(out.glob("checkpoint_*.pt")), weights_only=True)
    model = MLP(final["hidden"])
    model.load_state_dict(final["model"])
    test_accuracy = accuracy(model, *data["test"])
    done = time.perf_counter()
    report = {
        "wall_s": done - START,
        "import_s": IMPORTED - START,
        "prepare_s": prepared - IMPORTED,
        "train_s": trained - prepared,
        "loop_s": results["loop_s"],
        "evaluate_s": done - trained,
        "epochs": args.epochs,
        "val_accuracy": results["val_accuracy"],
        "test_accuracy": test_accuracy,
    }
    print(json.dumps(report) if args.json else "\n".join(f"{k}: {v:.4g}" for k, v in report.items()))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
