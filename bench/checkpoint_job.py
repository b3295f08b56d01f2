"""The train step of ``bench/checkpoint.py``: a stack of Linear blocks with AdamW whose model and
optimizer state together take ``state_gb``, trained on synthetic inputs for a fixed number of
steps an epoch (so FSDP ranks stay in lockstep), checkpointed every epoch as ``checkpoint``
says:

- ``none``: metrics only (the baseline);
- ``whole``: plain state dicts (``model.module.state_dict()``, ``optimizer.state_dict()``), saved
  whole by rank 0 before ``report`` returns (with ``strategy: ddp``);
- ``sharded``: the live model and optimizer, every rank its DCP shard (with ``strategy: fsdp``;
  ``checkpoint.asynchronous`` in the config picks the synchronous or the asynchronous save).

Rank 0 samples its own RSS every ``rss_interval_s`` in a background thread. A window opens as a
report is called and closes as the next one is (after the next epoch's training); one more
epoch is trained after the last report to close the last window (the baseline then reports a
tiny whole-state checkpoint: a train step must report one). Each window's peak is logged
with ``ctx.log_metrics`` at the MLflow step of the epoch whose report opened it (a ``metrics``
event in the run's events.jsonl) with the CPU seconds rank 0's process used in it; the RSS just
before each report, and before the model was built, travel in its metrics.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Literal

import psutil
import torch
from pydantic import Field

from raytrain_orch import Params, Pipeline

pipeline = Pipeline("checkpoint-bench", description="Checkpoint stalls, memory and durability of ~1 GB of state.")

MB = 2**20


class Stack(torch.nn.Module):
    """``layers`` residual blocks ``x + tanh(Linear(x))`` of width ``hidden``; FSDP shards each."""

    def __init__(self, hidden: int, layers: int):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(hidden, hidden) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + torch.tanh(block(x))
        return x


class RssSampler:
    """This process's RSS every ``interval_s``: the current value and the peak since the last ``take``."""

    def __init__(self, interval_s: float):
        self._process = psutil.Process()
        self._interval = interval_s
        self._lock = threading.Lock()
        self._peak = self.now()
        self._cpu = self.cpu()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def now(self) -> int:
        return self._process.memory_info().rss

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            rss = self.now()
            with self._lock:
                self._peak = max(self._peak, rss)
                self.samples += 1

    def take(self) -> tuple[int, float]:
        """The peak RSS since the last take (this moment's included) and the CPU seconds this process
        (all its threads) used since; a new window starts."""
        rss, cpu = self.now(), self.cpu()
        with self._lock:
            peak, self._peak = max(self._peak, rss), rss
        used, self._cpu = cpu - self._cpu, cpu
        return peak, used

    def cpu(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class TrainParams(Params):
    epochs: int = Field(4, ge=1, description="Reported (and checkpointed) epochs; one more closes the last window.")
    hidden: int = Field(2048, ge=8)
    layers: int = Field(20, ge=1, description="Blocks; the state is 3 × 4 bytes × layers × hidden × (hidden + 1).")
    steps: int = Field(4, ge=1, description="Training steps an epoch, on every rank.")
    batch_size: int = Field(32, ge=1, description="Per rank.")
    checkpoint: Literal["none", "whole", "sharded"] = "sharded"
    rss_interval_s: float = Field(0.01, gt=0)


@pipeline.train(params=TrainParams)
def train(ctx, params: TrainParams) -> None:
    torch.manual_seed(0)
    sampler = RssSampler(params.rss_interval_s) if ctx.rank == 0 else None
    start_mb = sampler.now() / MB if sampler is not None else 0.0  # the process before the model
    model = ctx.prepare_model(Stack(params.hidden, params.layers))
    plain = getattr(model, "module", model)  # DDP's wrapped module; FSDP2 keeps the class
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(ctx.rank)
    x = torch.randn(params.batch_size, params.hidden, generator=generator)
    target = torch.randn(params.batch_size, params.hidden, generator=generator)
    local_bytes = 0  # this rank's model + optimizer state, once the optimizer has its moments
    opened: int | None = None  # the epoch whose report opened the RSS window now open
    for epoch in range(params.epochs + 1):
        for _ in range(params.steps):
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(model(x), target)
            loss.backward()
            optimizer.step()
        if not local_bytes:
            local_bytes = _local_state_bytes(model, optimizer)
        if sampler is not None:
            peak, cpu_s = sampler.take()
            if opened is not None:
                window = {"rss_window_peak_mb": peak / MB, "window_cpu_s": cpu_s, "window_closed_ts": time.time()}
                ctx.log_metrics(window, step=opened)
        if epoch == params.epochs:
            if params.checkpoint == "none":  # a train step must report a checkpoint once: a tiny one, after the windows
                ctx.report({"epoch": epoch}, state={"epoch": epoch})
            break
        metrics = {"epoch": epoch, "loss": loss.item(), "local_state_mb": local_bytes / MB}
        metrics["malloc_mmap_threshold"] = float(os.environ.get("MALLOC_MMAP_THRESHOLD_", 0))  # what the worker got
        if sampler is not None:
            metrics.update(rss_before_mb=sampler.now() / MB, rss_start_mb=start_mb)
        opened = epoch
        if params.checkpoint == "none":
            ctx.report(metrics)
        elif params.checkpoint == "whole":
            ctx.report(
                metrics, state={"model": plain.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
            )
        else:
            ctx.report(metrics, state={"model": model, "optimizer": optimizer, "epoch": epoch})
    if sampler is not None:
        sampler.stop()


def _local_state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """The bytes of this rank's parameters and optimizer state (an FSDP rank's own shards)."""

    def local(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to_local() if hasattr(tensor, "to_local") else tensor

    total = sum(local(p).numel() * p.element_size() for p in model.parameters())
    for state in optimizer.state.values():
        total += sum(local(v).numel() * v.element_size() for v in state.values() if torch.is_tensor(v) and v.dim())
    return total
