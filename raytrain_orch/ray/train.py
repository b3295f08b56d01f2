"""Ray Train: a train step as a ``TorchTrainer`` (DDP or FSDP2), and the worker's entry point.

Driver side, ``run_train_step`` builds the trainer from the step's plan (scaling, strategy,
failure and checkpoint settings) and turns its result into the step's ``model`` artifact.
Worker side, ``_worker_entry`` calls the user's loop with a ``TrainContext``
(``ray/train_context.py``).
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import replace
from typing import Any, Callable, Mapping

import ray.data
import ray.train
from ray.train.torch import TorchTrainer

from raytrain_orch.context import StepContext
from raytrain_orch.core import constants
from raytrain_orch.core.errors import StepPreempted
from raytrain_orch.core.events import Event
from raytrain_orch.core.plan import StepPlan
from raytrain_orch.ray import data, stacks, warm
from raytrain_orch.ray.controller import WorkerGroupWatch
from raytrain_orch.ray.faults import collateral
from raytrain_orch.ray.train_context import PreemptedStop, TrainContext
from raytrain_orch.ray.usage import UsageSampler
from raytrain_orch.store import logcapture
from raytrain_orch.store.artifacts import Artifact, Output, write_artifact
from raytrain_orch.store.checkpoint import train_run_name
from raytrain_orch.store.storage import Storage
from raytrain_orch.tracking.system import SystemSampler


def _worker_entry(config: dict[str, Any]) -> None:
    """Runs on every worker: call the user's loop with its context, params and inputs."""
    _quiet_worker_reports()
    warm.fit_threads_to_cpus()
    if config.get("streams"):
        data.give_back_freed_memory()
    ctx = TrainContext(
        **{k: getattr(config["ctx"], k) for k in StepContext.__dataclass_fields__},
        scaling=config["scaling"],
        strategy=config["strategy"],
        strategy_options=config["strategy_options"],
        asynchronous_checkpoints=config["asynchronous_checkpoints"],
        preemptible=config.get("preemptible", False),
    )
    stacks.arm(ctx, rank=ctx.rank)
    kwargs: dict[str, Any] = {"ctx": ctx, **config["inputs"]}
    if config["params"] is not None:
        kwargs["params"] = config["params"]
    if ctx.rank == 0 and ctx.system_metrics:
        ctx.clock.system = SystemSampler(constants.SYSTEM_METRICS_SAMPLE_S).start()
    usage = UsageSampler(ctx.emit, rank=ctx.rank).start()  # every rank's own use, for the run report
    try:
        with logcapture.capture(ctx, rank=ctx.rank):
            try:
                config["fn"](**kwargs)
            except PreemptedStop:
                return  # checkpointed and stopping: the driver learns why from the progress channel
            ctx.finish()
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
        usage.stop()
        if ctx.clock.system is not None:
            ctx.clock.system.stop()
            ctx.clock.system = None


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
    preemptible: bool = False,
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
            "strategy": step.strategy,
            "strategy_options": step.strategy_options,
            "asynchronous_checkpoints": checkpoint.asynchronous,
            "preemptible": preemptible,
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
    preempted: Callable[[], StepPreempted | None] | None = None,
) -> Artifact:
    """Fit the trainer and store its chosen checkpoint (best by score, else latest) as the artifact.
    ``lease``: the admission ticket an elastic step's worker-group size is booked under.
    ``preempted``: given for a step that may be preempted, says after ``fit`` whether it stopped
    for that (raised, instead of storing an artifact)."""
    storage = ctx.storage
    trainer = build_trainer(step, fn, ctx, inputs, storage, callbacks, lease, preemptible=preempted is not None)
    try:
        result = trainer.fit()
    except Exception:
        if preempted is not None and (stop := preempted()) is not None:
            raise stop from None  # stopped without a checkpoint past its grace: it resumes from the one before
        raise
    if preempted is not None and (stop := preempted()) is not None:
        raise stop
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
