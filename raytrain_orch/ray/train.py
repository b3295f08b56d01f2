"""Ray Train: a train step as a ``TorchTrainer`` (DDP), and the worker-side helpers.

Driver side, ``run_train_step`` builds the trainer from the step's plan (scaling, failure and
checkpoint settings) and turns its result into the step's ``model`` artifact. Worker side,
the user's loop receives a ``TrainContext``::

    state = ctx.restore()                       # None, or the last reported state
    start = state["epoch"] + 1 if state else 0
    model = ctx.prepare_model(MLP(...))         # DDP (gloo on CPU, NCCL on GPU)
    for epoch in range(start, params.epochs):
        ...
        ctx.report({"epoch": epoch, "val_accuracy": acc}, state={"epoch": epoch, "model": ...})

``report`` checkpoints ``state`` from rank 0 every call and sends rank 0's metrics — with the
epoch's time, throughput and the node's system metrics — to the driver, which shows them and
logs them to MLflow (once per epoch, never per rank).
"""

from __future__ import annotations

import io
import logging
import posixpath
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import ray.data
import ray.train
import torch
from ray.train.torch import TorchTrainer

from raytrain_orch.context import StepContext
from raytrain_orch.core import constants
from raytrain_orch.core.config import ScalingConfig
from raytrain_orch.core.events import Event
from raytrain_orch.core.plan import StepPlan
from raytrain_orch.ray import data, stacks
from raytrain_orch.ray.controller import WorkerGroupWatch
from raytrain_orch.ray.faults import collateral
from raytrain_orch.store import logcapture
from raytrain_orch.store.artifacts import CHECKPOINT_STATE_FILE, Artifact, Output, write_artifact
from raytrain_orch.store.checkpoint import inspect_checkpoint, latest_good, train_run_name, write_manifest
from raytrain_orch.store.storage import Storage
from raytrain_orch.tracking.system import SystemSampler


@dataclass(frozen=True)
class TrainContext(StepContext):
    """A ``StepContext`` on one DDP worker."""

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
        workers = self.world_size if _resize.on_resize == "keep_global_batch" else _resize.max_workers
        return max(1, global_batch // workers)

    def scaled_lr(self, lr: float) -> float:
        """The learning rate for ``lr`` set at ``max`` workers: unchanged under
        ``keep_global_batch``; ``lr × world size / max`` under ``scale_lr`` (the linear scaling rule)."""
        if _resize.on_resize == "keep_global_batch":
            return lr
        return lr * self.world_size / _resize.max_workers

    @property
    def device(self) -> torch.device:
        """This worker's GPU when it has one; the CPU otherwise, also on logical GPUs
        (``ray start --num-gpus`` on a machine without CUDA), which Ray schedules like real ones."""
        return ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move ``model`` to this worker's device and wrap it in DDP."""
        prepared = ray.train.torch.prepare_model(model, move_to_device=self.device)
        _clock.last = time.perf_counter()  # the first epoch's time starts after the setup
        return prepared

    def prepare_data_loader(self, loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
        """Shard ``loader`` across workers (DistributedSampler) and move batches to the device.

        Its dataset's size, all workers' share together, is what an epoch's throughput counts.
        """
        try:
            _clock.samples = len(loader.dataset)  # type: ignore[arg-type]
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

    def restore(self) -> dict[str, Any] | None:
        """The state of the latest good checkpoint, or None on a fresh start.

        A checkpoint whose files fail their checksums is skipped with a warning naming it, and
        the newest one before it that verifies is used.
        """
        checkpoint = ray.train.get_checkpoint()
        try:
            return self._restore(checkpoint)
        finally:
            _clock.last = time.perf_counter()  # the first epoch's time starts after the restore

    def _restore(self, checkpoint: ray.train.Checkpoint | None) -> dict[str, Any] | None:
        if checkpoint is None:
            return None
        fs, path = checkpoint.filesystem, checkpoint.path
        info = inspect_checkpoint(fs, path)
        speaks = self.rank == 0  # every rank restores the same checkpoint; one tells the driver
        if not info.valid:
            # The previous good one: never a newer directory Ray Train's manager did not register.
            good, skipped = latest_good(fs, posixpath.dirname(path), before=posixpath.basename(path))
            for bad in [info, *skipped]:
                warnings.warn(f"step {self.step}: skipping checkpoint {bad.path}: {bad.problem}", stacklevel=2)
                if speaks:
                    self.emit(Event.CHECKPOINT_SKIPPED, checkpoint=bad.path, problem=bad.problem)
            if good is None:
                if speaks:
                    self.emit(Event.RESTORED, epoch=None, checkpoint=None)
                return None
            info = good
        assert fs is not None, "a checkpoint Ray Train hands over has its filesystem"
        with fs.open_input_stream(posixpath.join(info.path, CHECKPOINT_STATE_FILE)) as src:
            state = torch.load(io.BytesIO(src.read()), map_location="cpu", weights_only=True)
        if speaks:
            self.emit(Event.RESTORED, epoch=info.epoch, checkpoint=info.path)
        return state

    def report(
        self, metrics: Mapping[str, float], state: Mapping[str, Any] | None = None, samples: int | None = None
    ) -> None:
        """Report this epoch's metrics (every rank must call it); rank 0 also checkpoints ``state``.

        Rank 0 sends the driver the metrics (logged to MLflow with the epoch as MLflow ``step``),
        the epoch's performance — ``epoch_time_s``, ``throughput_samples_per_s`` (``samples``, or
        the size of the dataset given to ``prepare_data_loader``, per second of the epoch) and the
        node's ``system/*`` use — and its timings: ``epoch_s`` (since the previous report
        returned), ``report_s`` (Ray Train's report and checkpoint) and ``log_s`` (sampling).
        """
        metrics = {k: float(v) for k, v in metrics.items()}
        if self.rank != 0:
            ray.train.report(metrics)
            return
        began = time.perf_counter()
        epoch_s = began - _clock.last
        epoch = int(metrics["epoch"]) if "epoch" in metrics else None
        perf = {"epoch_time_s": round(epoch_s, 4), "world_size": float(self.world_size)}
        counted = samples if samples is not None else _clock.samples
        if counted and epoch_s > 0:
            perf["throughput_samples_per_s"] = round(counted / epoch_s, 1)
        if _clock.system is not None:
            perf.update(_clock.system.take())
        logged = time.perf_counter()
        if state is None:
            ray.train.report(metrics)
        else:
            with tempfile.TemporaryDirectory(prefix="rto-ckpt-") as directory:
                torch.save(dict(state), Path(directory) / CHECKPOINT_STATE_FILE)
                write_manifest(directory, epoch=epoch, metrics=metrics, torch=torch.__version__, ray=ray.__version__)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        _clock.last = time.perf_counter()
        timings = {
            "epoch_s": round(epoch_s, 4),
            "report_s": round(_clock.last - logged, 4),
            "log_s": round(logged - began, 4),
        }
        self.emit(Event.EPOCH, epoch=epoch, metrics=metrics, perf=perf, **timings)


class _Clock:
    """When this worker's previous report returned (or its loop began), how many samples an
    epoch has, and this node's system-metrics sampler (rank 0)."""

    last = time.perf_counter()
    samples: int | None = None
    system: SystemSampler | None = None


_clock = _Clock()


#: The step's ``scaling`` on this worker: what follows the world size of an elastic step.
_resize = ScalingConfig()


def _worker_entry(config: dict[str, Any]) -> None:
    """Runs on every worker: call the user's loop with its context, params and inputs."""
    global _resize
    _quiet_worker_reports()
    if config.get("streams"):
        data.give_back_freed_memory()
    ctx = TrainContext(**{k: getattr(config["ctx"], k) for k in StepContext.__dataclass_fields__})
    _resize = config["scaling"]
    stacks.arm(ctx, rank=ctx.rank)
    kwargs: dict[str, Any] = {"ctx": ctx, **config["inputs"]}
    if config["params"] is not None:
        kwargs["params"] = config["params"]
    if ctx.rank == 0 and ctx.system_metrics:
        _clock.system = SystemSampler(constants.SYSTEM_METRICS_SAMPLE_S).start()
    _clock.last, _clock.samples = time.perf_counter(), None
    try:
        with logcapture.capture(ctx, rank=ctx.rank):
            config["fn"](**kwargs)
    except Exception as error:
        if not collateral(error):
            # The step's own bug: tell the driver what it was, and stop Ray Train from spending its
            # worker-failure budget (FailureConfig.max_failures) re-running it.
            ctx.emit(
                Event.USER_ERROR,
                error_type=type(error).__name__,
                message=str(error),
                traceback=traceback.format_exc(),
                rank=ctx.rank,
            )
            _abort_training()
        raise
    finally:
        if _clock.system is not None:
            _clock.system.stop()
            _clock.system = None


def _abort_training() -> None:
    try:
        from ray.train.v2._internal.execution.context import get_train_context

        aborted = get_train_context().controller_actor.abort.remote()
    except (ImportError, AttributeError):  # another Ray layout: Ray Train retries as it would
        return
    # Wait for the controller to abort the worker group (this worker with it) rather than raise at
    # once: a raise that reaches the controller first is counted as a worker failure, and the group
    # is restarted from the checkpoint before the abort lands.
    ray.wait([aborted], timeout=constants.TRAIN_ABORT_WAIT_S)


def _quiet_worker_reports() -> None:
    """Ray Train logs every report and checkpoint at INFO on every worker, through loggers named
    by file path that its LoggingConfig does not reach; the driver prints progress instead. It
    also logs the traceback of a loop that raised, which the worker's console forwards to the
    driver's: the step's log keeps it (``logcapture.capture``), and the driver shows the step's own
    errors itself — a survivor's broken collective after a peer's node was lost is no error to
    show with a traceback."""
    try:
        from ray.train.v2._internal import util
        from ray.train.v2._internal.execution import context, storage
    except ImportError:  # another Ray layout: keep its logs rather than fail
        return
    for module, level in ((context, logging.WARNING), (storage, logging.WARNING), (util, logging.CRITICAL)):
        logging.getLogger(module.__file__).setLevel(level)
        logging.getLogger(module.__name__).setLevel(level)


def _scaling(scaling: Any) -> dict[str, Any]:
    """Ray Train's ScalingConfig of a step's ``scaling``: an elastic step's as a range (Train V2)."""
    elastic = {"elastic_resize_monitor_interval_s": scaling.resize_check_s} if scaling.elastic else {}
    return {
        "num_workers": (scaling.min_workers, scaling.max_workers) if scaling.elastic else scaling.min_workers,
        "use_gpu": scaling.use_gpu,
        "resources_per_worker": scaling.worker_bundle(),
        "placement_strategy": scaling.placement_strategy,
        **elastic,
    }


def build_trainer(
    step: StepPlan,
    fn: Callable,
    ctx: StepContext,
    inputs: Mapping[str, Artifact],
    storage: Storage,
    callbacks: list | None = None,
    lease: str | None = None,
) -> TorchTrainer:
    """The ``TorchTrainer`` of a train step: plain data in, no side effects."""
    scaling, failure, checkpoint = step.scaling, step.failure, step.checkpoint
    assert scaling and failure and checkpoint, f"{step.name} is not a planned train step"
    return TorchTrainer(
        _worker_entry,
        datasets=data.streamed_inputs(step, inputs),
        train_loop_config={
            "fn": fn,
            "ctx": replace(ctx, output_dir=None),
            "params": step.params,
            "inputs": dict(inputs),
            "streams": bool(step.datasets),
            "scaling": scaling,
        },
        scaling_config=ray.train.ScalingConfig(**_scaling(scaling)),
        torch_config=ray.train.torch.TorchConfig(backend=scaling.torch_backend),
        run_config=ray.train.RunConfig(  # type: ignore[call-arg]  # Train V2's (the stubs are V1's)
            # One Ray Train run per step and cache key: a retry or `rto resume` of the same step
            # continues from its checkpoints; changed params or code start afresh.
            name=train_run_name(step.name, step.cache_key),
            storage_path=storage.uri(*ctx.run_path, "checkpoints"),
            failure_config=ray.train.FailureConfig(  # type: ignore[call-arg]  # Train V2's fields
                max_failures=failure.max_failures,
                max_preemption_failures=failure.max_preemption_failures,
                # A worker group that cannot be (re)started — a lost node's capacity has not come back —
                # goes back to the runner after these retries, to wait in the admission queue where
                # `rto status` shows why, instead of retrying inside Ray Train forever (its default).
                controller_failure_limit=constants.TRAIN_START_RETRIES,
            ),
            # Ray Train logs every report and checkpoint at INFO; the driver shows progress instead.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=[*(callbacks or []), WorkerGroupWatch(ctx, scaling, lease)],  # type: ignore[list-item]  # a controller hook
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=checkpoint.num_to_keep,
                checkpoint_score_attribute=checkpoint.score_attribute,
                checkpoint_score_order=checkpoint.mode,
            ),
        ),
    )


def run_train_step(
    step: StepPlan,
    fn: Callable,
    ctx: StepContext,
    inputs: Mapping[str, Artifact],
    callbacks: list | None = None,
    lease: str | None = None,
) -> Artifact:
    """Fit the trainer and store its chosen checkpoint (best by score, else latest) as the artifact.
    ``lease``: the admission ticket an elastic step's worker-group size is booked under."""
    storage = ctx.storage
    result = build_trainer(step, fn, ctx, inputs, storage, callbacks, lease).fit()
    assert step.checkpoint is not None
    chosen, metrics = result.checkpoint, dict(result.metrics or {})
    score, mode = step.checkpoint.score_attribute, step.checkpoint.mode
    if score and result.best_checkpoints:
        pick = max if mode == "max" else min
        chosen, metrics = pick(result.best_checkpoints, key=lambda pair: pair[1][score])
    if chosen is None:
        raise RuntimeError(
            f"train step {step.name!r} reported no checkpoint; call ctx.report(metrics, state=...) at least once"
        )
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return write_artifact(
        storage, ctx.artifact_path, step.name, Output(metrics=numeric), checkpoint=_as_uri(storage, chosen.path)
    )


def _as_uri(storage: Storage, path: str) -> str:
    """Ray Train returns filesystem paths; make remote ones full URIs again."""
    if storage.local_path() is not None or "://" in path:
        return path
    scheme = storage.root_uri.split("://", 1)[0]
    return f"{scheme}://{path}"
