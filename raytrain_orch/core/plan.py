"""Plan before schedule: the DAG order, each step's gang, cache key and hang limit.

Pure: no Ray, no I/O. ``build_plan`` turns a config and a pipeline into plain data that
``rto plan`` prints and tests assert on; whether its gangs fit a cluster is ``placement``'s.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from raytrain_orch.core.config import PipelineConfig
from raytrain_orch.core.errors import ConfigError
from raytrain_orch.core.pipeline import Params, Pipeline, Step
from raytrain_orch.core.placement import GangSpec
from raytrain_orch.core.redact import redact
from raytrain_orch.core.step_config import (
    CheckpointConfig,
    FailureConfig,
    HangConfig,
    MapConfig,
    RetryConfig,
    ScalingConfig,
    StepConfig,
)
from raytrain_orch.core.strategy import StrategyOptions
from raytrain_orch.core.sweep_config import SweepConfig


@dataclass(frozen=True)
class HangLimit:
    """A step's hang limit: ``timeout_s`` when the step sets one, else derived from ``policy``
    and its own progress (``core.hang.Watch``)."""

    timeout_s: float | None
    policy: HangConfig


@dataclass(frozen=True)
class StepPlan:
    name: str
    kind: str
    inputs: tuple[str, ...]
    gang: GangSpec
    cache_key: str
    params: Params | None
    retries: RetryConfig
    scaling: ScalingConfig | None = None
    failure: FailureConfig | None = None
    checkpoint: CheckpointConfig | None = None
    #: A train step's ``strategy`` (ddp or fsdp) and, for fsdp, its ``strategy_options``.
    strategy: str = "ddp"
    strategy_options: StrategyOptions | None = None
    sweep: SweepConfig | None = None  # set on the one train step a sweep runs as Tune trials
    #: A train step's streamed inputs: shard name → (upstream step, its dataset).
    datasets: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: How the step is watched for hangs; None: it is not (``hang_detection: false``).
    hang: HangLimit | None = None
    conditional: bool = False  # it runs only if its ``when`` holds
    optional: tuple[str, ...] = ()  # inputs it takes as None when their condition skipped them
    map_over: str | None = None  # it runs once per item of this step's items
    map: MapConfig | None = None  # how its items run (a mapped step's)
    #: A mapped step's key without the items' step: each item's cache key is this and the item's value,
    #: so a changed item list recomputes only the items that are new or changed.
    item_base_key: str | None = None

    def describe_gang(self) -> str:
        """The gang as ``rto plan`` and the console show it; an elastic step's as its range."""
        if self.scaling is None or not self.scaling.elastic:
            return self.gang.describe()
        bundle = self.gang.describe().split(" × ", 1)[1]
        return f"{self.scaling.describe_workers()} × {bundle} (elastic)"

    def describe_kind(self) -> str:
        """The kind as ``rto plan`` shows it: ``train (fsdp)`` for a sharded train step."""
        return f"{self.kind} ({self.strategy})" if self.scaling and self.strategy != "ddp" else self.kind

    def describe_after(self) -> str:
        """Its inputs as ``rto plan`` shows them: an optional one marked ``?``, a condition ``(when)``."""
        after = ",".join(f"{dep}?" if dep in self.optional else dep for dep in self.inputs) or "-"
        return f"{after} (when)" if self.conditional else after

    @property
    def workers(self) -> str:
        """A train step's worker count as ``rto plan`` shows it: ``2``, or ``1–4`` when elastic."""
        return self.scaling.describe_workers() if self.scaling else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "inputs": list(self.inputs),
            **({"when": True} if self.conditional else {}),
            **({"optional": list(self.optional)} if self.optional else {}),
            **({"map_over": self.map_over} if self.map_over else {}),
            "gang": {"bundles": [dict(b) for b in self.gang.bundles], "strategy": self.gang.strategy},
            "cache_key": self.cache_key,
            **({"workers": self.workers, "strategy": self.strategy} if self.scaling else {}),
            **({"datasets": {k: ".".join(v) for k, v in self.datasets.items()}} if self.datasets else {}),
            "params": redact(self.params.model_dump(mode="json"))
            if self.params
            else {},  # shown and logged: no secrets
        }


@dataclass(frozen=True)
class Plan:
    pipeline: str
    config_hash: str
    steps: tuple[StepPlan, ...]

    def step(self, name: str) -> StepPlan:
        return next(s for s in self.steps if s.name == name)

    def downstream(self, name: str) -> set[str]:
        """Every step that depends, directly or not, on ``name``."""
        found: set[str] = set()
        frontier = {name}
        while frontier:
            frontier = {s.name for s in self.steps if set(s.inputs) & frontier} - found
            found |= frontier
        return found

    def to_dict(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "config_hash": self.config_hash, "steps": [s.to_dict() for s in self.steps]}


def build_plan(config: PipelineConfig, pipeline: Pipeline, *, source: str = "config") -> Plan:
    """Validate the config against the pipeline and return the plan; raise ``ConfigError``."""
    declared = pipeline.steps
    for name in config.steps:
        if name not in declared:
            hint = difflib.get_close_matches(name, list(declared), n=1)
            suggestion = f"did you mean 'steps.{hint[0]}'? " if hint else ""
            raise ConfigError(
                f"{source}: unknown step 'steps.{name}'; {suggestion}pipeline {pipeline.name!r} has steps "
                f"{sorted(declared)}"
            )
    sweep = config.sweep
    if sweep is not None:
        _check_sweep(sweep, pipeline, config, source)
    keys: dict[str, str] = {}
    steps = []
    for name in pipeline.order():
        step = declared[name]
        params = step.bind_params(config.step(name).params, source=source)
        swept = sweep if sweep is not None and sweep.step == name else None
        keys[name] = cache_key(step, params, [keys[d] for d in step.inputs], sweep=swept)
        item_key = None
        if step.map_over is not None:
            item_key = cache_key(step, params, [keys[d] for d in step.inputs if d != step.map_over], sweep=swept)
        steps.append(plan_step(step, config, params, keys[name], source, item_key))
    return Plan(pipeline=pipeline.name, config_hash=config.fingerprint(), steps=tuple(steps))


def plan_step(
    step: Step, config: PipelineConfig, params: Params | None, key: str, source: str, item_key: str | None = None
) -> StepPlan:
    """One step's plan: its gang and settings from the config, its bound ``params`` and cache ``key``
    (a mapped step's ``item_key``: its key without the items' step)."""
    step_config = config.step(step.name)
    swept = config.sweep if config.sweep is not None and config.sweep.step == step.name else None
    planned = _plan_step(step, step_config, params, key, source)
    if step_config.hang_detection and not swept:  # a sweep's trials are Tune's to stop
        planned = replace(planned, hang=HangLimit(step_config.hang_timeout_s, config.hang))
    if step.map_over is not None:
        if swept:
            raise ConfigError(f"{source}: sweep.step {step.name!r} is a mapped step; sweep a step that is not mapped")
        planned = replace(planned, map_over=step.map_over, map=step_config.map or MapConfig(), item_base_key=item_key)
    elif step_config.map is not None:
        raise ConfigError(
            f"{source}: steps.{step.name}.map applies to mapped steps only; declare it with map_over='STEP'"
        )
    return replace(planned, sweep=swept) if swept else planned


def _check_sweep(sweep: SweepConfig, pipeline: Pipeline, config: PipelineConfig, source: str) -> None:
    """The swept step exists and trains; every dimension names one of its params, and every
    value a dimension can take is a valid value of that param."""
    declared = pipeline.steps
    trains = sorted(n for n, s in declared.items() if s.kind == "train")
    if sweep.step not in declared or declared[sweep.step].kind != "train":
        hint = difflib.get_close_matches(sweep.step, trains, n=1)
        suggestion = f"did you mean {hint[0]!r}? " if hint else ""
        raise ConfigError(
            f"{source}: sweep.step {sweep.step!r} is not a train step of pipeline {pipeline.name!r}; "
            f"{suggestion}train steps: {trains}"
        )
    step = declared[sweep.step]
    scaling = config.step(sweep.step).scaling
    if scaling is not None and scaling.elastic:
        raise ConfigError(
            f"{source}: steps.{sweep.step}.scaling.num_workers is a range ({scaling.describe_workers()}), but a "
            f"swept step's trials need a fixed size to be compared; set one number"
        )
    fields = sorted(step.params_model.model_fields) if step.params_model else []
    base = dict(config.step(sweep.step).params)
    for name, dimension in sweep.space.items():
        if name not in fields:
            hint = difflib.get_close_matches(name, fields, n=1)
            suggestion = f"did you mean 'sweep.space.{hint[0]}'? " if hint else ""
            raise ConfigError(
                f"{source}: sweep.space.{name}: step {sweep.step!r} has no param {name!r}; {suggestion}its params: "
                f"{fields}"
            )
        kind, value = dimension.kind, dimension.value
        edges = [value[0], value[1] - 1] if kind == "randint" else list(value)
        for edge in edges:
            try:
                step.bind_params({**base, name: edge}, source=source)
            except ConfigError as e:
                raise ConfigError(
                    f"{source}: sweep.space.{name}.{kind} includes {edge!r}, which step {sweep.step!r} rejects: "
                    f"{str(e).split(': ', 1)[-1]}"
                ) from None


def _plan_step(step: Step, cfg: StepConfig, params: Params | None, key: str, source: str) -> StepPlan:
    common: dict[str, Any] = dict(
        name=step.name,
        kind=step.kind,
        inputs=step.inputs,
        cache_key=key,
        params=params,
        retries=cfg.retries,
        conditional=step.when is not None,
        optional=step.optional,
    )
    if step.kind == "task":
        for train_only in ("scaling", "failure", "checkpoint", "strategy", "strategy_options"):
            if getattr(cfg, train_only) is not None:
                raise ConfigError(
                    f"{source}: steps.{step.name}.{train_only} applies to train steps only; {step.name!r} is a task "
                    "step"
                )
        return StepPlan(
            gang=GangSpec(tuple(dict(cfg.resources) for _ in range(cfg.bundles)), cfg.placement_strategy), **common
        )
    defaults = StepConfig()
    for task_only, instead in (
        ("resources", "scaling.resources_per_worker"),
        ("bundles", "scaling.num_workers"),
        ("placement_strategy", "scaling.placement_strategy"),
    ):
        if getattr(cfg, task_only) != getattr(defaults, task_only):  # resolved configs spell out every default
            raise ConfigError(
                f"{source}: steps.{step.name}.{task_only} applies to task steps only; for train step {step.name!r} "
                f"set steps.{step.name}.{instead}"
            )
    strategy = cfg.strategy or "ddp"
    if cfg.strategy_options is not None and strategy != "fsdp":
        raise ConfigError(
            f"{source}: steps.{step.name}.strategy_options applies to strategy fsdp only; set "
            f"steps.{step.name}.strategy: fsdp, or remove strategy_options"
        )
    scaling = cfg.scaling or ScalingConfig()
    # Ray Train's controller actor asks for no resources (num_cpus=0), so the workers' bundles are the whole gang.
    # An elastic step is admitted with its minimum; its lease then follows the group Ray Train starts.
    gang = GangSpec(tuple(scaling.worker_bundle() for _ in range(scaling.min_workers)), scaling.placement_strategy)
    return StepPlan(
        gang=gang,
        scaling=scaling,
        failure=cfg.failure or FailureConfig(),
        checkpoint=cfg.checkpoint or CheckpointConfig(),
        strategy=strategy,
        strategy_options=(cfg.strategy_options or StrategyOptions()) if strategy == "fsdp" else None,
        datasets=dict(step.datasets),
        **common,
    )


def cache_key(step: Step, params: Params | None, input_keys: list[str], sweep: SweepConfig | None = None) -> str:
    """hash(step code version, resolved params, input artifacts' keys[, the sweep: its space,
    searcher, scheduler, samples and seed])."""
    payload = {
        "step": step.name,
        "code": step.code_version(),
        "params": params.model_dump(mode="json") if params else {},
        "inputs": input_keys,
    }
    if sweep is not None:
        payload["sweep"] = sweep.model_dump(mode="json")
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
