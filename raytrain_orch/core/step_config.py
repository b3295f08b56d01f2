"""A step's settings in a pipeline config (``steps.NAME``): its resources, retries, and a
train step's worker group, failure budget, checkpoints and hang watch.

Pure: no Ray, no MLflow.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
)

from raytrain_orch.core.strategy import StrategyOptions
from raytrain_orch.core.validation import StrictModel

PlacementStrategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]
ResourceAmount = Annotated[float, Field(ge=0)]


class RetryConfig(StrictModel):
    max: NonNegativeInt = Field(2, description="Retries after infrastructure faults and after errors listed in 'on'.")
    backoff_s: NonNegativeFloat = Field(
        1.0, description="First retry delay in seconds; doubles each retry, with jitter."
    )
    on: tuple[str, ...] = Field((), description="Exception type names of the step's own errors that are retried too.")


class ScalingConfig(StrictModel):
    num_workers: PositiveInt | tuple[PositiveInt, PositiveInt] = Field(
        1,
        description="DDP workers (one process each); [min, max] makes the step elastic: it starts when min workers "
        "fit, grows toward max as capacity appears, and goes on with the workers that remain when a node is lost.",
    )
    resize_check_s: PositiveFloat = Field(
        60.0,
        description="Elastic steps: how often Ray Train checks whether capacity appeared to grow the group "
        "(a grow restarts the workers from the latest checkpoint).",
    )
    on_resize: Literal["keep_global_batch", "scale_lr"] = Field(
        "keep_global_batch",
        description="Elastic steps: what follows the world size. keep_global_batch: ctx.batch_size(GLOBAL) is "
        "GLOBAL / world size per worker and ctx.scaled_lr(LR) is LR; scale_lr: the per-worker batch stays "
        "GLOBAL / max and ctx.scaled_lr(LR) is LR × world size / max (the linear scaling rule).",
    )
    use_gpu: bool = Field(False, description="Give each worker one GPU and use NCCL.")
    resources_per_worker: dict[str, ResourceAmount] | None = Field(
        None, description="Resources of one worker; default {CPU: 1} (plus {GPU: 1} with use_gpu)."
    )
    placement_strategy: PlacementStrategy = Field("PACK", description="Ray placement strategy of the workers' gang.")
    torch_backend: Literal["nccl", "gloo"] | None = Field(
        None,
        description="torch.distributed backend; default NCCL with GPUs, gloo without (gloo also runs on logical GPUs).",
    )

    @field_validator("num_workers", mode="before")
    @classmethod
    def _a_count_or_a_range(cls, value: Any) -> Any:
        def count(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v > 0

        if count(value):
            return value
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(count(v) for v in value):
            if value[0] > value[1]:
                raise ValueError(f"[min, max] needs min <= max (got {list(value)})")
            return tuple(value)
        given = f" (got {list(value)})" if isinstance(value, (list, tuple)) else ""  # pydantic shows a scalar itself
        raise ValueError(f"give a positive integer, or [min, max] for an elastic step{given}")

    @property
    def min_workers(self) -> int:
        return self.num_workers[0] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def max_workers(self) -> int:
        return self.num_workers[1] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def elastic(self) -> bool:
        return self.min_workers != self.max_workers

    def describe_workers(self) -> str:
        return f"{self.min_workers}–{self.max_workers}" if self.elastic else str(self.min_workers)

    def worker_bundle(self) -> dict[str, float]:
        bundle = dict(self.resources_per_worker or {"CPU": 1.0})
        if self.use_gpu:
            bundle.setdefault("GPU", 1.0)
        return bundle


class FailureConfig(StrictModel):
    max_failures: NonNegativeInt = Field(
        2, description="Worker-group restarts after a worker dies (from the latest checkpoint)."
    )
    max_preemption_failures: int = Field(
        -1, ge=-1, description="Restarts after preemptions, a budget of their own (-1: unlimited)."
    )


class CheckpointConfig(StrictModel):
    num_to_keep: PositiveInt | None = Field(2, description="Checkpoints kept per train step (None: all).")
    score_attribute: str | None = Field(None, description="Metric that ranks checkpoints (None: newest wins).")
    mode: Literal["max", "min"] = Field("max", description="Whether a higher or lower score is better.")
    asynchronous: bool = Field(
        True,
        description="Sharded checkpoints (live modules and optimizers in ctx.report's state): training waits only "
        "while the state is staged, and the shards are written and uploaded in the background (false: report "
        "returns once they are durable). A whole-state checkpoint is always written before report returns.",
    )


class MapConfig(StrictModel):
    """How a mapped step (``map_over=``) runs its items."""

    max_concurrency: PositiveInt | None = Field(
        None, description="The most items that run at once (unset: as many as admission allows)."
    )
    failure: Literal["fail_fast", "all"] = Field(
        "all",
        description="all: every item runs whatever the others do; fail_fast: an item's failure skips the items not "
        "started yet. Either way the step fails if an item failed, naming it.",
    )


class StepConfig(StrictModel):
    resources: dict[str, ResourceAmount] = Field(
        default_factory=lambda: {"CPU": 1.0}, description="Resources of a task step's single bundle."
    )
    bundles: PositiveInt = Field(
        1,
        description="Task steps: bundles of 'resources' in the gang; the step runs in the first, its Ray tasks in any.",
    )
    placement_strategy: PlacementStrategy = Field("PACK", description="Strategy of a task step's gang.")
    retries: RetryConfig = Field(default_factory=RetryConfig, description="Retry policy of the step.")
    params: dict[str, Any] = Field(default_factory=dict, description="The step's params (validated by the step).")
    scaling: ScalingConfig | None = Field(None, description="Train steps only: the DDP worker group.")
    failure: FailureConfig | None = Field(None, description="Train steps only: Ray Train failure budget.")
    checkpoint: CheckpointConfig | None = Field(None, description="Train steps only: checkpoint retention.")
    strategy: Literal["ddp", "fsdp"] | None = Field(
        None,
        description="Train steps only: how ctx.prepare_model distributes the model. ddp (the default): every worker "
        "holds all of it; fsdp: FSDP2 shards parameters, gradients and optimizer state across the workers, for "
        "models larger than one worker.",
    )
    strategy_options: StrategyOptions | None = Field(
        None, description="Train steps with strategy fsdp only: mixed precision and how the model is sharded."
    )
    hang_timeout_s: PositiveFloat | None = Field(
        None,
        description="Seconds without progress (a train step's report, a task step's ctx.heartbeat()) after which "
        "the step is hung; unset: the pipeline's hang settings derive it from the step's own epoch times.",
    )
    hang_detection: bool = Field(
        True, description="Watch the step for hangs (false: never end it for making no progress)."
    )
    map: MapConfig | None = Field(None, description="Mapped steps only (map_over=): how their items run.")


class HangConfig(StrictModel):
    """How a step's hang limit is derived when its ``hang_timeout_s`` is unset."""

    multiple: float = Field(
        5.0, gt=1, description="The limit is this many times the step's median epoch (or heartbeat) interval…"
    )
    floor_s: PositiveFloat = Field(300.0, description="…but never less than this many seconds.")
    startup_s: PositiveFloat = Field(
        1800.0,
        description="The limit before a step's first progress, and after its workers restart (no epoch time to go "
        "by yet).",
    )
