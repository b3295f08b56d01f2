"""Plan before schedule: the DAG order, each step's gang and cache key, and feasibility.

Pure: no Ray, no I/O. ``build_plan`` turns a config and a pipeline into plain data that
``rto plan`` prints and tests assert on; ``check_gang`` decides whether a gang can ever be
placed on a cluster described as a list of per-node resource dicts.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from raytrain_orch.core.config import (
    CheckpointConfig,
    FailureConfig,
    HangConfig,
    PipelineConfig,
    RetryConfig,
    ScalingConfig,
    StepConfig,
    SweepConfig,
)
from raytrain_orch.core.errors import ConfigError
from raytrain_orch.core.pipeline import Params, Pipeline, Step
from raytrain_orch.core.redact import redact
from raytrain_orch.core.strategy import StrategyOptions

Bundle = dict[str, float]


@dataclass(frozen=True)
class GangSpec:
    """Bundles reserved together, all or nothing, with a Ray placement strategy."""

    bundles: tuple[Bundle, ...]
    strategy: str = "PACK"

    def total(self) -> Bundle:
        total: Bundle = {}
        for bundle in self.bundles:
            for key, amount in bundle.items():
                total[key] = total.get(key, 0.0) + amount
        return total

    def describe(self) -> str:
        groups: dict[str, int] = {}
        for bundle in self.bundles:
            text = "{" + ", ".join(f"{k}: {_num(v)}" for k, v in sorted(bundle.items())) + "}"
            groups[text] = groups.get(text, 0) + 1
        return " + ".join(f"{n} × {text}" for text, n in groups.items()) + f" {self.strategy}"


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

    def describe_gang(self) -> str:
        """The gang as ``rto plan`` and the console show it; an elastic step's as its range."""
        if self.scaling is None or not self.scaling.elastic:
            return self.gang.describe()
        bundle = self.gang.describe().split(" × ", 1)[1]
        return f"{self.scaling.describe_workers()} × {bundle} (elastic)"

    def describe_kind(self) -> str:
        """The kind as ``rto plan`` shows it: ``train (fsdp)`` for a sharded train step."""
        return f"{self.kind} ({self.strategy})" if self.scaling and self.strategy != "ddp" else self.kind

    @property
    def workers(self) -> str:
        """A train step's worker count as ``rto plan`` shows it: ``2``, or ``1–4`` when elastic."""
        return self.scaling.describe_workers() if self.scaling else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "inputs": list(self.inputs),
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
        step_config = config.step(name)
        params = step.bind_params(step_config.params, source=source)
        swept = sweep if sweep is not None and sweep.step == name else None
        keys[name] = cache_key(step, params, [keys[d] for d in step.inputs], sweep=swept)
        planned = _plan_step(step, step_config, params, keys[name], source)
        if step_config.hang_detection and not swept:  # a sweep's trials are Tune's to stop
            planned = replace(planned, hang=HangLimit(step_config.hang_timeout_s, config.hang))
        steps.append(replace(planned, sweep=swept) if swept else planned)
    return Plan(pipeline=pipeline.name, config_hash=config.fingerprint(), steps=tuple(steps))


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
        name=step.name, kind=step.kind, inputs=step.inputs, cache_key=key, params=params, retries=cfg.retries
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


# --- feasibility -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Feasibility:
    feasible: bool
    reason: str = ""


@dataclass(frozen=True)
class NodeType:
    """A kind of node an autoscaler can still add: its resources and how many more it may add."""

    resources: Bundle
    max_more: int  # -1: no limit


@dataclass(frozen=True)
class ClusterSpec:
    """What a cluster offers: one resource dict per node (totals, not what is free now), and the
    node types its autoscaler may still add."""

    nodes: tuple[Bundle, ...] = field(default_factory=tuple)
    node_types: tuple[NodeType, ...] = field(default_factory=tuple)

    def total(self) -> Bundle:
        return GangSpec(self.nodes).total()

    def grown(self, bundles: int) -> tuple[Bundle, ...]:
        """The nodes, plus as many of each addable node type as ``bundles`` bundles could use."""
        extra = [
            dict(t.resources)
            for t in self.node_types
            for _ in range(bundles if t.max_more < 0 else min(bundles, t.max_more))
        ]
        return (*self.nodes, *extra)

    def describe(self) -> str:
        total = self.total()
        shown = ", ".join(f"{k}: {_num(v)}" for k, v in sorted(total.items()) if not _is_internal(k))
        text = f"{len(self.nodes)} node(s) with {{{shown}}} in total"
        if self.node_types:
            growable = "; ".join(
                f"{'unlimited' if t.max_more < 0 else t.max_more} × {_fmt_bundle(t.resources)}" for t in self.node_types
            )
            text += f", autoscaling up to {growable} more"
        return text


def check_gang(step: str, gang: GangSpec, cluster: ClusterSpec) -> Feasibility:
    """Can ``gang`` ever be placed on ``cluster`` (counting nodes an autoscaler may add)?"""
    asked = gang.describe()
    nodes = cluster.grown(len(gang.bundles))
    whole = ClusterSpec(nodes)
    total = whole.total()
    for key, amount in gang.total().items():
        if amount <= 0:
            continue
        have = total.get(key, 0.0)
        if have == 0:
            return Feasibility(
                False, f"step {step} needs {asked}; the cluster has no {key} at all ({cluster.describe()})"
            )
        if amount > have + 1e-9:
            return Feasibility(
                False, f"step {step} needs {asked} ({_num(amount)} {key} in total); the cluster has {_num(have)} {key}"
            )
    if place(gang, nodes) is not None:
        return Feasibility(True)
    if gang.strategy == "STRICT_PACK":
        largest = {k: _num(max((n.get(k, 0.0) for n in nodes), default=0.0)) for k in gang.total()}
        return Feasibility(False, f"step {step} needs {asked} on one node; the largest node has {_fmt(largest)}")
    if gang.strategy == "STRICT_SPREAD":
        able = sum(1 for n in nodes if any(_fits(b, n) for b in gang.bundles))
        return Feasibility(
            False,
            f"step {step} needs {asked}, one bundle per node; only {able} node(s) can hold one ({whole.describe()})",
        )
    return Feasibility(
        False, f"step {step} needs {asked}; its bundles do not fit on the nodes of the cluster ({whole.describe()})"
    )


#: Placement is an exhaustive search up to this many tries; past it the search gives up and
#: reports no placement (only gangs of many mixed bundles on many mixed nodes get that far).
_SEARCH_LIMIT = 20_000


def place(gang: GangSpec, free: Sequence[Bundle]) -> list[int] | None:
    """The node index of each bundle of ``gang`` on nodes with ``free`` resources, or None if it
    cannot be placed there. Respects the strategy: STRICT_PACK on one node, STRICT_SPREAD on
    distinct nodes; PACK and SPREAD are preferences, so any placement will do.

    A depth-first search over bundles, largest first, that skips nodes whose free resources
    equal one already tried for the same bundle, so it stays fast on large uniform clusters.
    """
    if not gang.bundles:
        return []
    if gang.strategy == "STRICT_PACK":
        need = gang.total()
        node = next((i for i, n in enumerate(free) if _fits(need, n)), None)
        return None if node is None else [node] * len(gang.bundles)
    order = sorted(range(len(gang.bundles)), key=lambda i: -sum(gang.bundles[i].values()))
    left = [dict(n) for n in free]
    chosen: list[int] = [-1] * len(gang.bundles)
    tries = 0

    def search(depth: int) -> bool:
        nonlocal tries
        if depth == len(order):
            return True
        bundle = gang.bundles[order[depth]]
        seen: list[Bundle] = []
        for i, node in enumerate(left):
            if gang.strategy == "STRICT_SPREAD" and i in chosen:
                continue
            if not _fits(bundle, node) or node in seen:
                continue
            seen.append(dict(node))
            tries += 1
            _take(node, bundle, -1)
            chosen[order[depth]] = i
            if search(depth + 1):
                return True
            _take(node, bundle, +1)
            chosen[order[depth]] = -1
            if tries > _SEARCH_LIMIT:
                return False
        return False

    return chosen if search(0) else None


def max_concurrent_trials(sweep: SweepConfig, gang: GangSpec, cluster: ClusterSpec) -> int:
    """How many trials of ``sweep`` can train at once: copies of the swept step's gang the
    cluster holds (nodes it may still add included), at least 1 and at most ``num_samples``."""
    limit = sweep.num_samples * max(1, _grid_points(sweep))
    return max(1, copies(gang, cluster.grown(len(gang.bundles) * limit), limit))


def _grid_points(sweep: SweepConfig) -> int:
    points = 1
    for dimension in sweep.space.values():
        if dimension.kind == "grid":
            points *= len(dimension.value)
    return points


def copies(gang: GangSpec, nodes: Sequence[Bundle], limit: int) -> int:
    """How many copies of ``gang`` (at most ``limit``) ``nodes`` hold at once, each placed on
    what the ones before it left."""
    left = [dict(n) for n in nodes]
    count = 0
    while count < limit and (spots := place(gang, left)) is not None:
        for bundle, node in zip(gang.bundles, spots, strict=True):
            _take(left[node], bundle, -1)
        count += 1
    return count


def _take(node: Bundle, bundle: Bundle, sign: int) -> None:
    for key, amount in bundle.items():
        node[key] = node.get(key, 0.0) + sign * amount


def _fits(bundle: Bundle, node: Bundle) -> bool:
    return all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items() if v > 0)


def _is_internal(key: str) -> bool:
    return key.startswith("node:") or key in ("memory", "object_store_memory") or key.startswith("accelerator_type")


def _num(value: float) -> str:
    return f"{value:g}"


def _fmt_bundle(bundle: Bundle) -> str:
    return _fmt({k: _num(v) for k, v in bundle.items() if not _is_internal(k)})


def _fmt(resources: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(resources.items())) + "}"
