"""Typed, strict configuration: pydantic models of ``configs/NAME.yaml`` and ``--set`` overrides.

Pure: no Ray, no MLflow. Every model forbids unknown keys; errors name the key path and
suggest the nearest valid name. A step's ``params`` are validated later against the params
model its pipeline declares (see ``pipeline.Step.bind_params``), with the same error format.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from raytrain_orch.core.errors import ConfigError
from raytrain_orch.core.strategy import StrategyOptions

PlacementStrategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]
ResourceAmount = Annotated[float, Field(ge=0)]
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class ChampionConfig(StrictModel):
    alias: str = Field(
        "champion", min_length=1, description="Registered-model alias that names the best version so far."
    )
    metric: str = Field(
        ..., min_length=1, description="Metric passed to register_model(metrics=...) that decides, e.g. test_accuracy."
    )
    mode: Literal["max", "min"] = Field("max", description="Whether a higher or a lower value of the metric is better.")


class MlflowConfig(StrictModel):
    tracking_uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI (sqlite file or http server).")
    experiment: str | None = Field(None, description="Experiment name; default: the config's name.")
    champion: ChampionConfig | None = Field(
        None,
        description="Move an alias to each newly registered model version that beats the one holding it (None: no "
        "alias).",
    )
    system_metrics: bool = Field(
        True, description="Log CPU, memory, disk, network (and GPU) use per epoch of train steps as system/* metrics."
    )


class RayConfig(StrictModel):
    address: str | None = Field(None, description="Cluster to join ('auto', 'HOST:6379'); None starts a local Ray.")
    num_cpus: PositiveInt | None = Field(None, description="Local Ray only: CPUs to offer (default: all).")
    num_gpus: NonNegativeInt | None = Field(None, description="Local Ray only: GPUs to offer (default: detected).")
    resources: dict[str, ResourceAmount] | None = Field(
        None, description="Local Ray only: custom resources to offer, e.g. {TPU: 4}."
    )
    runtime: Literal["shared", "throwaway"] = Field(
        "shared",
        description="Local Ray only: 'shared' joins the local runtime later runs reuse (started by the first run, "
        "stopped after idle_stop_s without a run, or by `rto down`); 'throwaway' starts a Ray that stops with the run.",
    )
    idle_stop_s: PositiveFloat = Field(
        900.0, description="Local Ray only: the shared runtime stops after this long without a run."
    )


class AdmissionConfig(StrictModel):
    priority: int = Field(
        0, description="Gangs of higher priority are admitted first; equal priorities in arrival order."
    )
    timeout_s: PositiveFloat | None = Field(
        None, description="Fail a step that waits longer than this for its gang (None: wait)."
    )


_SPACES = ("uniform", "loguniform", "randint", "choice", "grid")


class SearchDimension(StrictModel):
    """One swept param, written as one key: ``{loguniform: [1e-4, 1e-1]}``, ``{choice: [64, 128]}``.

    ``uniform``/``loguniform`` are floats in [low, high]; ``randint`` integers in [low, high);
    ``choice`` samples one of the values; ``grid`` runs every value (random searcher only).
    """

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    choice: list[Any] | None = None
    grid: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "SearchDimension":
        given = [k for k in _SPACES if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(_SPACES)}; got {given or 'none'}")
        kind = given[0]
        value = getattr(self, kind)
        if kind in ("uniform", "loguniform", "randint"):
            low, high = value
            if not low < high:
                raise ValueError(f"{kind} needs [low, high] with low < high; got [{low}, {high}]")
            if kind == "loguniform" and low <= 0:
                raise ValueError(
                    f"loguniform bounds must be > 0, got [{low}, {high}]; use uniform for a range that reaches 0 or "
                    "below"
                )
        elif not value:
            raise ValueError(f"{kind} needs at least one value")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in _SPACES if getattr(self, k) is not None)

    @property
    def value(self) -> Any:
        return getattr(self, self.kind)


class SweepConfig(StrictModel):
    step: str = Field(..., description="The train step to sweep: each trial is a full DDP run of it.")
    metric: str = Field(..., description="The reported metric that ranks trials, e.g. val_accuracy.")
    mode: Literal["max", "min"] = Field("max", description="Whether a higher or lower metric is better.")
    num_samples: PositiveInt = Field(8, description="Trials to run (with grid dimensions: samples per grid point).")
    space: dict[str, SearchDimension] = Field(
        ..., min_length=1, description="The swept params of the step and their ranges."
    )
    searcher: Literal["random", "optuna"] = Field(
        "random", description="How trials pick params: random (and grid), or Optuna TPE."
    )
    scheduler: Literal["fifo", "asha", "median"] = Field(
        "fifo", description="Early stopping: none (fifo), ASHA, or median stopping."
    )
    grace_period: PositiveInt = Field(1, description="ASHA/median: epochs a trial runs before it may be stopped.")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: the fraction 1/factor of trials kept at each rung.")
    max_concurrent_trials: PositiveInt | None = Field(
        None, description="Trials at once (default: as many gangs as the cluster holds)."
    )
    seed: int = Field(0, description="Seed of the searcher, so a sweep is reproducible and its cache key stable.")

    @model_validator(mode="after")
    def _grid_needs_random(self) -> "SweepConfig":
        grid = [name for name, dim in self.space.items() if dim.kind == "grid"]
        if grid and self.searcher != "random":
            raise ValueError(
                f"grid dimensions ({', '.join(grid)}) need searcher: random; with {self.searcher} use choice instead"
            )
        return self


class StorageOptions(StrictModel):
    endpoint_url: str | None = Field(
        None,
        description="S3-compatible endpoint (MinIO, Ceph, a test server) for s3:// storage, given to the driver and "
        "every worker as AWS_ENDPOINT_URL; unset: the environment's AWS_ENDPOINT_URL, else AWS. Credentials never "
        "go here: the standard AWS variables or the nodes' role supply them.",
    )
    region: str | None = Field(None, description="The bucket's region, given as AWS_DEFAULT_REGION (unset: as found).")
    shared_mount: bool = Field(
        False,
        description="The local storage path is a mount every node shares (NFS, EFS, a PVC). Without it a run on a "
        "cluster refuses a local path, whose files another node would never see.",
    )

    def environment(self) -> dict[str, str]:
        """The variables that point pyarrow, Ray Train and MLflow's boto3 at the store."""
        env = {}
        if self.endpoint_url:
            env["AWS_ENDPOINT_URL"] = self.endpoint_url
        if self.region:
            env["AWS_DEFAULT_REGION"] = self.region
        return env


class PipelineConfig(StrictModel):
    name: str = Field(..., pattern=_NAME, description="Name of the pipeline run series (also the default experiment).")
    pipeline: str = Field(..., description="Where the pipeline is declared, as 'module:attribute'.")
    storage: str = Field("./rto-runs", description="Storage root: a local path or a pyarrow filesystem URI.")
    storage_options: StorageOptions = Field(
        default_factory=StorageOptions, description="How nodes reach the storage root: endpoint, region, shared mount."
    )
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig, description="MLflow tracking.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray cluster to run on.")
    admission: AdmissionConfig = Field(
        default_factory=AdmissionConfig, description="How this run's gangs queue for the cluster."
    )
    steps: dict[str, StepConfig] = Field(default_factory=dict, description="Per-step settings, by step name.")
    hang: HangConfig = Field(
        default_factory=HangConfig, description="Hang detection: how a step's limit follows its own epoch times."
    )
    sweep: SweepConfig | None = Field(None, description="Turn one train step into a Ray Tune sweep over its params.")

    @field_validator("pipeline")
    @classmethod
    def _module_attr(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
            raise ValueError(f"must look like 'package.module:attribute', got {value!r}")
        return value

    @property
    def experiment(self) -> str:
        return self.mlflow.experiment or self.name

    def step(self, name: str) -> StepConfig:
        return self.steps.get(name) or StepConfig()

    def to_yaml(self) -> str:
        return str(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))

    def fingerprint(self) -> str:
        """A short stable hash of the resolved config."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# --- loading ---------------------------------------------------------------------------------


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> PipelineConfig:
    """Read a YAML config, apply ``--set a.b=c`` overrides, validate; raise ``ConfigError``."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"config file {str(path)!r} not found; pass the path of a YAML file such as configs/digits.yaml"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise ConfigError(
            f"config file {str(path)!r} cannot be read ({why}); pass the path of a UTF-8 YAML file such as "
            "configs/digits.yaml"
        ) from None
    return parse_config(text, str(path), overrides)


def parse_config(text: str, source: str, overrides: typing.Sequence[str] = ()) -> PipelineConfig:
    """Parse YAML text (``source`` names it in errors), apply overrides, validate."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys (name, pipeline, steps, …)")
    for item in overrides:
        apply_override(raw, item)
    return validate(PipelineConfig, raw, source=source)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``dotted.key=yaml-value`` override in place.

    A path that does not start with a top-level key means a step (``train.params.lr=0.1`` is
    ``steps.train.params.lr``), even one the file leaves at its defaults; the pipeline checks
    the step name later. A near miss of a top-level key (``mlfow.…``) is reported as such.
    """
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set steps.train.params.lr=0.01")
    parts = key.strip().split(".")
    top_level = list(PipelineConfig.model_fields)
    if parts[0] not in top_level:
        near = difflib.get_close_matches(parts[0], top_level, n=1, cutoff=0.8)
        if near and parts[0] not in (raw.get("steps") or {}):
            raise ConfigError(f"--set {item!r}: unknown key {parts[0]!r}; did you mean {near[0]!r}?")
        parts = ["steps", *parts]
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML; quote it, e.g. {key}='…'") from None
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {part!r} holds a value, not a mapping of keys")
        node = child
    node[parts[-1]] = parsed


M = typing.TypeVar("M", bound=BaseModel)


def validate(model: type[M], raw: Any, *, source: str = "config", prefix: tuple[str | int, ...] = ()) -> M:
    """Validate ``raw`` against ``model``; on failure raise a one-line ``ConfigError``."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_validation_error(e, model, prefix)}") from None


def format_validation_error(error: ValidationError, model: type[BaseModel], prefix: tuple[str | int, ...] = ()) -> str:
    messages = []
    for err in error.errors():
        loc = tuple(err["loc"])
        path = ".".join(str(p) for p in (*prefix, *loc)) or "(top level)"
        if err["type"] == "extra_forbidden":
            known = _field_names_at(model, loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
            suggestion = f"did you mean {'.'.join(str(p) for p in (*prefix, *loc[:-1], hint[0]))!r}? " if hint else ""
            messages.append(f"unknown key {path!r}; {suggestion}valid keys here: {', '.join(sorted(known))}")
        elif err["type"] == "missing":
            messages.append(f"missing required key {path!r}")
        else:
            given = err.get("input")
            shown = "" if isinstance(given, (dict, list)) else f" (got {given!r})"
            messages.append(f"{path}: {err['msg'].removeprefix('Value error, ')}{shown}")
    return "; ".join(messages)


def _field_names_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """The valid keys of the mapping at ``loc`` inside ``model`` (for did-you-mean hints)."""
    annotation: Any = model
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return []
            annotation = field.annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """``X | None`` → ``X``."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation
