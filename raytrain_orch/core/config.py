"""The pipeline config file (``configs/NAME.yaml``): its top-level model with the run-wide
sections (storage, MLflow, Ray, admission), read from YAML with ``--set`` overrides.

Pure: no Ray, no MLflow. Every model forbids unknown keys; errors name the key path and
suggest the nearest valid name (``validation``). A step's settings are ``step_config``'s, a
sweep's ``sweep_config``'s; a step's ``params`` are validated later against the params model
its pipeline declares (see ``pipeline.Step.bind_params``), with the same error format.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from raytrain_orch.core.errors import ConfigError
from raytrain_orch.core.step_config import HangConfig, ResourceAmount, StepConfig
from raytrain_orch.core.sweep_config import SweepConfig
from raytrain_orch.core.validation import StrictModel, validate

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


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
    queue: str = Field(
        "default",
        min_length=1,
        description="The cluster queue the run's gangs are admitted through (`rto queue` lists them; defined with "
        "`rto queues apply`); its quota bounds what the run holds at once.",
    )
    preemptible: bool = Field(
        True,
        description="Whether a higher-priority gang (or a queue reclaiming its quota) may preempt the run's train "
        "steps: they checkpoint at their next report, stop, and resume from there when capacity returns. Task steps "
        "and sweep trials are never preempted.",
    )
    min_runtime_s: NonNegativeFloat = Field(
        0.0, description="A train step is not preempted sooner than this after its gang was granted."
    )


#: What a webhook may be told of (``notify[].on``).
Alert = Literal["failed", "recovered", "hung", "preempted", "waiting", "finished"]
ALERTS: tuple[Alert, ...] = ("failed", "recovered", "hung", "preempted", "waiting", "finished")


class NotifyConfig(StrictModel):
    url: str = Field(
        ...,
        pattern=r"^https?://[^\s/]+",
        description="The webhook's URL (Slack's incoming webhooks and any endpoint taking a JSON POST). A secret: "
        "shown as scheme://host/*** wherever the config is logged or printed.",
    )
    on: list[Alert] = Field(
        default_factory=lambda: list(ALERTS),
        min_length=1,
        description="What to tell it: failed (the run failed), recovered (a step succeeded after a retry or a "
        "restart of its workers), hung (a step was found hung), preempted (a step was preempted), waiting (a step "
        "waited longer than waiting_after_s for its gang), finished (the run ended without failing).",
    )
    waiting_after_s: PositiveFloat = Field(
        1800.0, description="For `waiting`: how long a step waits for its gang before the webhook is told."
    )

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        """YAML 1.1 reads a bare ``on:`` key as the boolean True."""
        if isinstance(data, dict) and True in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data


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
    cost: dict[str, NonNegativeFloat] | None = Field(
        None,
        description="Prices per resource-hour, by Ray resource name ({GPU: 2.5, CPU: 0.04}; memory per GiB-hour): "
        "the run report and the MLflow pipeline run get cost_estimate and the cost of idle reservations. None: no "
        "cost is shown.",
    )
    notify: list[NotifyConfig] = Field(
        default_factory=list,
        description="Webhooks told when the run fails, recovers, hangs, is preempted, waits long or finishes "
        "(a Slack-compatible JSON body). Delivery is retried and never blocks or fails the run.",
    )

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
