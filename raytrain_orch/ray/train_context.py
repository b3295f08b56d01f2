"""``TrainContext``: the ``ctx`` a train step's loop receives on every Ray Train worker::

    model = ctx.prepare_model(Net(...))           # DDP, or FSDP2-sharded with strategy: fsdp
    optimizer = torch.optim.AdamW(model.parameters())
    values = ctx.restore({"model": model, "optimizer": optimizer})   # None on a fresh start
    start = values["epoch"] + 1 if values else 0
    for epoch in range(start, params.epochs):
        ...
        ctx.report({"epoch": epoch, "val_loss": loss}, state={"model": model, "optimizer": optimizer, "epoch": epoch})

A state's live modules and optimizers are checkpointed sharded by every rank (in the
background, ``ray/checkpointing.py``) and restore onto any world size; its plain values travel
as they are. The whole-state form — plain state dicts in ``state``, ``ctx.restore()`` with no
argument — is saved by rank 0 alone, as before.

``report`` sends rank 0's metrics — with the epoch's time, throughput and the node's system
metrics — to the driver, which shows them and logs them to MLflow (once per epoch, never per
rank).

A preempted step (a higher-priority gang needs its workers) is stopped at a report: every rank
checkpoints there and the loop ends; the step resumes from that checkpoint later, through
``restore``. A loop with long epochs asks ``should_checkpoint()`` between batches and reports
at once when it says so.
"""

from __future__ import annotations

import contextlib
import io
import posixpath
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import ray.data
import ray.train
import torch

from raytrain_orch.context import StepContext
from raytrain_orch.core.events import Event
from raytrain_orch.core.step_config import ScalingConfig
from raytrain_orch.core.strategy import StrategyOptions
from raytrain_orch.ray import strategy as strategies
from raytrain_orch.ray.checkpointing import ShardedCheckpoints
from raytrain_orch.store.artifacts import CHECKPOINT_STATE_FILE
from raytrain_orch.store.checkpoint import CheckpointInfo, inspect_checkpoint, latest_good, write_manifest
from raytrain_orch.store.state_dicts import Live, sharded_tensor_in, split_state


class Sampler(Protocol):
    """Rank 0's system-metrics sampler (``tracking/system.py``): the means since the last take."""

    def take(self) -> dict[str, float]: ...

    def stop(self) -> None: ...


@dataclass
class WorkerClock:
    """One worker's mutable side: when its previous report returned (or its loop began), how
    many samples an epoch has, its system-metrics sampler (rank 0) and its sharded checkpoints."""

    last: float = field(default_factory=time.perf_counter)
    samples: int | None = None
    system: Sampler | None = None
    checkpoints: ShardedCheckpoints = field(default_factory=ShardedCheckpoints)
    reports: int = 0  # reports made so far
    stop_ask: Any = None  # this rank's ask at its previous report: whether (and where) to stop
    stop_now: bool = False  # stop at the next report that checkpoints
    stop_group: Any = None  # the gloo group ranks agree on ``should_checkpoint`` over


class PreemptedStop(BaseException):
    """Ends a preempted step's loop on every rank after its checkpoint (``_worker_entry`` catches
    it). A ``BaseException``, so a loop's own ``except Exception`` does not swallow it."""


@dataclass(frozen=True)
class TrainContext(StepContext):
    """A ``StepContext`` on one train worker."""

    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    strategy: str = "ddp"
    strategy_options: StrategyOptions | None = None
    asynchronous_checkpoints: bool = True
    preemptible: bool = False  # the driver may ask it to stop (admission.preemptible)
    clock: WorkerClock = field(default_factory=WorkerClock, repr=False, compare=False)

    @property
    def rank(self) -> int:
        return ray.train.get_context().get_world_rank()

    @property
    def world_size(self) -> int:
        return ray.train.get_context().get_world_size()

    def batch_size(self, global_batch: int) -> int:
        """This worker's batch size for a global batch of ``global_batch`` under the step's
        ``scaling.on_resize`` rule: ``keep_global_batch`` (the default) divides it by the world
        size as it is now, so every size trains with the same global batch; ``scale_lr`` divides it
        by ``max`` workers, so a smaller group trains with a smaller global batch (and
        ``scaled_lr`` lowers the learning rate to match). A fixed-size step: global / workers."""
        keep = self.scaling.on_resize == "keep_global_batch"
        return max(1, global_batch // (self.world_size if keep else self.scaling.max_workers))

    def scaled_lr(self, lr: float) -> float:
        """The learning rate for ``lr`` set at ``max`` workers: unchanged under
        ``keep_global_batch``; ``lr × world size / max`` under ``scale_lr`` (the linear scaling rule)."""
        if self.scaling.on_resize == "keep_global_batch":
            return lr
        return lr * self.world_size / self.scaling.max_workers

    @property
    def device(self) -> torch.device:
        """This worker's GPU when it has one; the CPU otherwise, also on logical GPUs
        (``ray start --num-gpus`` on a machine without CUDA), which Ray schedules like real ones."""
        return ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move ``model`` to this worker's device and distribute it as the step's ``strategy``
        says: wrapped in DDP (``ddp``), or sharded with FSDP2 block by block (``fsdp``). Build the
        optimizer over the returned model's parameters."""
        prepared = strategies.prepare_model(model, self.strategy, self.strategy_options, self.device)
        self.clock.last = time.perf_counter()  # the first epoch's time starts after the setup
        return prepared

    def prepare_data_loader(self, loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
        """Shard ``loader`` across workers (DistributedSampler) and move batches to the device.

        Its dataset's size, all workers' share together, is what an epoch's throughput counts.
        """
        try:
            self.clock.samples = len(loader.dataset)  # type: ignore[arg-type]
        except TypeError:  # an iterable dataset: pass report(samples=...) to get a throughput
            pass
        return ray.train.torch.prepare_data_loader(loader, move_to_device=self.device.type != "cpu")

    def dataset_shard(self, name: str) -> ray.data.DataIterator:
        """This worker's shard of a streamed dataset (``@pipeline.train(datasets=...)``), read as
        it is consumed: ``for batch in ctx.dataset_shard("train").iter_torch_batches(batch_size=...)``.
        Each pass over it is one epoch of this worker's share; pass ``report(samples=...)`` for a
        throughput."""
        return ray.train.get_dataset_shard(name)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log metrics to the step's MLflow run from rank 0 (other ranks' calls are dropped, so
        every value is logged once)."""
        if self.rank == 0:
            super().log_metrics(metrics, step=step)

    def restore(self, into: Mapping[str, Live] | None = None) -> dict[str, Any] | None:
        """The latest good checkpoint, or None on a fresh start. Every rank calls it.

        With ``into`` (``{"model": model, "optimizer": optimizer}``, the live objects a sharded
        checkpoint was reported with): loads the checkpoint into them, resharded onto this world
        size, and returns its plain values. Without: returns the whole state (a whole-state
        checkpoint's). A checkpoint whose files fail their checksums, or that lacks a rank's
        shard, is skipped with a warning naming it, and the newest one before it that verifies
        is used.
        """
        checkpoint = ray.train.get_checkpoint()
        try:
            info = self._latest_good(checkpoint)
            if info is None:
                return None
            assert checkpoint is not None and checkpoint.filesystem is not None
            if into is not None:
                state = self.clock.checkpoints.restore(into, info, checkpoint.filesystem)
            elif info.sharded:
                raise TypeError(
                    f"step {self.step}: checkpoint {info.name} is sharded (live objects were reported in its "
                    'state); restore into them: ctx.restore({"model": model, "optimizer": optimizer})'
                )
            else:
                with checkpoint.filesystem.open_input_stream(posixpath.join(info.path, CHECKPOINT_STATE_FILE)) as src:
                    state = torch.load(io.BytesIO(src.read()), map_location="cpu", weights_only=True)
            if self.rank == 0:
                self.emit(Event.RESTORED, epoch=info.epoch, checkpoint=info.path)
            return state
        finally:
            self.clock.last = time.perf_counter()  # the first epoch's time starts after the restore

    def _latest_good(self, checkpoint: ray.train.Checkpoint | None) -> CheckpointInfo | None:
        if checkpoint is None:
            return None
        fs, path = checkpoint.filesystem, checkpoint.path
        info = inspect_checkpoint(fs, path)
        if info.valid:
            return info
        speaks = self.rank == 0  # every rank restores the same checkpoint; one tells the driver
        # The previous good one: never a newer directory Ray Train's manager did not register.
        good, skipped = latest_good(fs, posixpath.dirname(path), before=posixpath.basename(path))
        for bad in [info, *skipped]:
            warnings.warn(f"step {self.step}: skipping checkpoint {bad.path}: {bad.problem}", stacklevel=3)
            if speaks:
                self.emit(Event.CHECKPOINT_SKIPPED, checkpoint=bad.path, problem=bad.problem)
        if good is None and speaks:
            self.emit(Event.RESTORED, epoch=None, checkpoint=None)
        return good

    def report(
        self, metrics: Mapping[str, float], state: Mapping[str, Any] | None = None, samples: int | None = None
    ) -> None:
        """Report this epoch's metrics (every rank must call it) and checkpoint ``state``.

        ``state``'s live modules and optimizers are checkpointed sharded, every rank its own
        part; training waits only while they are staged, and the files are written and
        uploaded in the background (``checkpoint.asynchronous``). Its plain values are saved by
        rank 0. A state of plain values only is saved whole by rank 0 before report returns.

        Rank 0 sends the driver the metrics (logged to MLflow with the epoch as MLflow ``step``),
        the epoch's performance — ``epoch_time_s``, ``throughput_samples_per_s`` (``samples``, or
        the size of the dataset given to ``prepare_data_loader``, per second of the epoch) and the
        node's ``system/*`` use — and its timings: ``epoch_s`` (since the previous report
        returned), ``report_s`` (the time training stood still: Ray Train's report and the
        checkpoint's staging, or its whole write when synchronous) and ``log_s`` (sampling).
        """
        metrics = {k: float(v) for k, v in metrics.items()}
        live, values = split_state(state or {})
        leader = self.rank == 0
        stop = self._stop_due()
        began = time.perf_counter()
        epoch_s = began - self.clock.last
        epoch = int(metrics["epoch"]) if "epoch" in metrics else None
        perf: dict[str, float] = {}
        if leader:
            perf = {"epoch_time_s": round(epoch_s, 4), "world_size": float(self.world_size)}
            counted = samples if samples is not None else self.clock.samples
            if counted and epoch_s > 0:
                perf["throughput_samples_per_s"] = round(counted / epoch_s, 1)
            if self.clock.system is not None:
                perf.update(self.clock.system.take())
        logged = time.perf_counter()
        fields: dict[str, Any] = dict(epoch=epoch, metrics=metrics, torch=torch.__version__, ray=ray.__version__)
        if live:
            self.clock.checkpoints.save(
                live, values, fields, asynchronous=self.asynchronous_checkpoints, on_durable=self._on_durable(epoch)
            )
        elif state is not None and leader:
            if (name := sharded_tensor_in(values)) is not None:
                raise TypeError(
                    f"step {self.step}: state[{name!r}] holds sharded tensors (an FSDP model's state_dict()), which "
                    f"rank 0 alone cannot save; report the module itself: state={{{name!r}: model, ...}}"
                )
            with tempfile.TemporaryDirectory(prefix="rto-ckpt-") as directory:
                torch.save(values, Path(directory) / CHECKPOINT_STATE_FILE)
                write_manifest(directory, **fields)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        else:
            ray.train.report(metrics)
        self.clock.last = time.perf_counter()
        if leader:
            timings = {
                "epoch_s": round(epoch_s, 4),
                "report_s": round(self.clock.last - logged, 4),
                "log_s": round(logged - began, 4),
            }
            self.emit(Event.EPOCH, epoch=epoch, metrics=metrics, perf=perf, **timings)
        if stop and state is None:
            self.clock.stop_now = True  # nothing to resume from at this report: stop at the next that checkpoints
        elif stop:
            self._stop(epoch)

    def should_checkpoint(self) -> bool:
        """Whether the step is asked to stop (it is preempted): then report now, with its state,
        and the loop ends at that report. For loops whose epochs are long: ask between batches
        (every rank, at the same points; it costs a round trip to the driver's node and, with
        several workers, a collective). Always False for a step that is not preemptible."""
        if not self.preemptible or self.events is None:
            return False
        with contextlib.suppress(Exception):  # the channel is restarting: not asked to stop, as far as known
            self.clock.stop_now |= bool(
                ray.get(self.events.actor.stop_requested.remote(self._attempt_key()), timeout=30)
            )
        if self.world_size > 1:
            import torch.distributed as dist

            if self.clock.stop_group is None:
                self.clock.stop_group = dist.new_group(backend="gloo")
            flag = torch.tensor([1 if self.clock.stop_now else 0])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.clock.stop_group)
            self.clock.stop_now = bool(flag.item())
        return self.clock.stop_now

    def _attempt_key(self) -> str:
        return f"{self.step}/{self.attempt}"

    def _stop_due(self) -> bool:
        """Whether to stop at this report: asked at the previous one (so no report waits for an
        answer), at the report the driver's request fixed for every rank."""
        if not self.preemptible or self.events is None:
            return False
        report, self.clock.reports = self.clock.reports, self.clock.reports + 1
        stop_at = None
        if self.clock.stop_ask is not None:
            with contextlib.suppress(Exception):  # the channel is restarting: asked again now
                stop_at = ray.get(self.clock.stop_ask, timeout=30)
        self.clock.stop_ask = self.events.actor.stopping.remote(self._attempt_key(), report)
        return self.clock.stop_now or (stop_at is not None and report >= stop_at)

    def _stop(self, epoch: int | None) -> None:
        """Preempted: wait until this report's checkpoint is on storage, say which epoch it holds
        (rank 0), and end the loop on every rank."""
        self.clock.checkpoints.wait()
        if self.rank == 0 and self.events is not None:
            ray.get(self.events.actor.stopped.remote(self._attempt_key(), epoch), timeout=60)
        raise PreemptedStop()

    def _on_durable(self, epoch: int | None) -> Callable[[str, float], None]:
        def durable(checkpoint: str, seconds: float) -> None:
            self.emit(Event.CHECKPOINT_DURABLE, epoch=epoch, checkpoint=checkpoint, durable_s=round(seconds, 4))

        return durable

    def finish(self) -> None:
        """At the loop's end: wait for the last checkpoint's upload (an error in it is raised)."""
        self.clock.checkpoints.wait()
