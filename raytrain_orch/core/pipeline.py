"""Declaring a pipeline: steps, their inputs, their params, and DAG validation.

Pure: no Ray. A step is a plain function. Its parameters say what it needs:

- ``ctx``: the step's context (``StepContext`` for task steps, ``TrainContext`` for train steps);
- ``params``: its validated params, an instance of the ``Params`` model given at declaration;
- any other name: the output artifact of the upstream step of that name.

    pipeline = Pipeline("digits")

    @pipeline.task(params=PrepareParams)
    def prepare(ctx, params): ...

    @pipeline.train(params=TrainParams)
    def train(ctx, params, prepare): ...     # runs on every DDP worker

A train step may stream an upstream step's datasets (``Output(datasets=...)``) instead of reading
them whole: ``@pipeline.train(datasets={"train": "prepare.train"})`` gives each worker a shard,
``ctx.dataset_shard("train")``, through Ray Data.

A step may run only when a condition holds, decided once its inputs are done:
``@pipeline.task(when=lambda evaluate: evaluate.metrics["test_accuracy"] >= 0.95)``. The
condition takes upstream artifacts by parameter name, like a step, and those steps are inputs of
the step. A false condition skips the step, and the steps after it, except those that declare it
``optional=["STEP"]`` (they receive None for it).

Steps may be declared in any order; ``Pipeline.order()`` checks the DAG.
"""

from __future__ import annotations

import difflib
import graphlib
import hashlib
import importlib
import inspect
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict

from raytrain_orch.core.code_version import sources
from raytrain_orch.core.errors import ConfigError, PipelineDefinitionError
from raytrain_orch.core.validation import validate

StepKind = Literal["task", "train"]
_RESERVED = ("ctx", "params")


#: A step: a plain function whose parameters name what it needs (``ctx``, ``params``, inputs).
StepFn = Callable[..., Any]


class Params(BaseModel):
    """Base class of a step's params: strict (unknown keys rejected) and immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Step:
    name: str
    fn: Callable[..., Any]
    kind: StepKind
    inputs: tuple[str, ...]
    params_model: type[Params] | None = None
    version: str | None = None
    #: A train step's streamed inputs: shard name → (upstream step, its dataset).
    datasets: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: Runs only when this returns true, called with the upstream artifacts it names.
    when: Callable[..., Any] | None = None
    #: Inputs that may be skipped (their condition was false): the step receives None for them.
    optional: tuple[str, ...] = ()
    #: The upstream step whose ``items`` this step runs once for each (``ctx.item``).
    map_over: str | None = None

    @property
    def arguments(self) -> tuple[str, ...]:
        """The upstream steps the function receives (the others are inputs of its condition only)."""
        parameters = inspect.signature(self.fn).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in parameters):  # a stand-in (a recorded plan's): it takes all
            return self.inputs
        names = {p.name for p in parameters}
        return tuple(name for name in self.inputs if name in names)

    @property
    def condition_inputs(self) -> tuple[str, ...]:
        return tuple(inspect.signature(self.when).parameters) if self.when is not None else ()

    def code_version(self) -> str:
        """The explicit ``version=``, or a hash of the step's source and of the functions and
        classes of its own module that it uses (editing a helper such as the model class
        changes the version of every step that calls it)."""
        if self.version is not None:
            return self.version
        digest = hashlib.sha256()
        for source in sources(self.fn) + (sources(self.when) if self.when is not None else []):
            digest.update(source.encode())
        return digest.hexdigest()[:16]

    def bind_params(self, raw: dict[str, Any], *, source: str = "config") -> Params | None:
        """Validate the config's ``steps.NAME.params`` against the step's params model."""
        prefix = ("steps", self.name, "params")
        if self.params_model is None:
            if raw:
                raise ConfigError(
                    f"{source}: step {self.name!r} declares no params, but the config gives "
                    f"{'.'.join(prefix)}: {sorted(raw)}; remove them or declare params= on the step"
                )
            return None
        return validate(self.params_model, raw, source=source, prefix=prefix)


class Pipeline:
    """A named set of steps that form a DAG through their inputs."""

    def __init__(self, name: str, description: str = ""):
        self.name = name
        self.description = description
        self._steps: dict[str, Step] = {}

    @property
    def steps(self) -> dict[str, Step]:
        return dict(self._steps)

    def task(
        self,
        fn: StepFn | None = None,
        *,
        name: str | None = None,
        params: type[Params] | None = None,
        version: str | None = None,
        when: Callable[..., Any] | None = None,
        optional: Sequence[str] = (),
        map_over: str | None = None,
    ) -> Any:
        """Declare a task step: runs once, as a Ray task inside the step's gang. ``when``: run it
        only if this returns true (see the module's doc); ``optional``: inputs it takes as None
        when their condition skipped them; ``map_over``: run it once per item of that step's
        ``Output(items=...)``, each item its own unit (``ctx.item``, ``ctx.item_index``)."""
        return self._declare(fn, "task", name, params, version, when=when, optional=optional, map_over=map_over)

    def train(
        self,
        fn: StepFn | None = None,
        *,
        name: str | None = None,
        params: type[Params] | None = None,
        version: str | None = None,
        datasets: Mapping[str, str] | Sequence[str] = (),
        when: Callable[..., Any] | None = None,
        optional: Sequence[str] = (),
        map_over: str | None = None,
    ) -> Any:
        """Declare a train step: ``fn`` is the per-worker loop run by Ray Train's TorchTrainer.

        ``datasets`` streams upstream datasets to the workers, a shard each: ``{"train":
        "prepare.train"}`` (shard name → ``STEP.DATASET``), or ``["prepare.train"]`` to name each
        shard as its dataset. The upstream step must be an input of the step. ``when``,
        ``optional`` and ``map_over`` as for ``task`` (a mapped train step: one worker group per item)."""
        return self._declare(fn, "train", name, params, version, datasets, when, optional, map_over)

    def _declare(
        self,
        fn: StepFn | None,
        kind: StepKind,
        name: str | None,
        params: type[Params] | None,
        version: str | None,
        datasets: Mapping[str, str] | Sequence[str] = (),
        when: Callable[..., Any] | None = None,
        optional: Sequence[str] = (),
        map_over: str | None = None,
    ) -> Any:
        """``@pipeline.task`` and ``@pipeline.task(...)`` alike: the function itself comes back."""

        def register(func: StepFn) -> StepFn:
            step = _make_step(func, kind, name or func.__name__, params, version)
            step = _mapped(_conditional(replace(step, datasets=_streams(step, datasets)), when, optional), map_over)
            self.add(step)
            return func

        return register(fn) if fn is not None else register

    def add(self, step: Step) -> None:
        """Add a step: one declared by ``task`` or ``train``, or a recorded plan's (``core.recorded_plan``)."""
        if step.name in self._steps:
            raise PipelineDefinitionError(f"pipeline {self.name!r}: step {step.name!r} is declared twice; rename one")
        self._steps[step.name] = step

    def order(self) -> list[str]:
        """Step names in a dependency order; raise ``PipelineDefinitionError`` on a bad DAG."""
        if not self._steps:
            raise PipelineDefinitionError(
                f"pipeline {self.name!r} declares no steps; decorate functions with @pipeline.task / @pipeline.train"
            )
        for step in self._steps.values():
            for dep in step.inputs:
                if dep not in self._steps:
                    hint = difflib.get_close_matches(dep, list(self._steps), n=1)
                    suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; steps are {sorted(self._steps)}"
                    raise PipelineDefinitionError(
                        f"pipeline {self.name!r}: step {step.name!r} takes input {dep!r}, but no step has that "
                        f"name{suggestion}"
                    )
        sorter = graphlib.TopologicalSorter({s.name: s.inputs for s in self._steps.values()})
        try:
            return list(sorter.static_order())
        except graphlib.CycleError as e:
            cycle = " -> ".join(e.args[1])
            raise PipelineDefinitionError(
                f"pipeline {self.name!r}: steps form a cycle ({cycle}); a step cannot depend on its own output"
            ) from None


def _make_step(fn: StepFn, kind: StepKind, name: str, params: type[Params] | None, version: str | None) -> Step:
    if not callable(fn):
        raise PipelineDefinitionError(f"step {name!r}: expected a function, got {fn!r}")
    if params is not None and not (isinstance(params, type) and issubclass(params, BaseModel)):
        raise PipelineDefinitionError(f"step {name!r}: params= must be a Params subclass, got {params!r}")
    signature = inspect.signature(fn)
    for parameter in signature.parameters.values():
        # The runner calls a step with keyword arguments only: fn(ctx=…, params=…, UPSTREAM=…).
        if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            raise PipelineDefinitionError(
                f"step {name!r}: parameter {str(parameter)!r} is {parameter.kind.description}; steps are called by "
                "keyword, so declare plain parameters: ctx, params and the names of upstream steps"
            )
    names = list(signature.parameters)
    if not names or names[0] != "ctx":
        raise PipelineDefinitionError(
            f"step {name!r}: the first parameter must be 'ctx' (the step context), got {names[:1]}"
        )
    if params is not None and "params" not in names:
        raise PipelineDefinitionError(
            f"step {name!r}: declares params={params.__name__} but its function has no 'params' parameter"
        )
    if params is None and "params" in names:
        raise PipelineDefinitionError(
            f"step {name!r}: its function takes 'params' but the step declares none; pass params=YourParams"
        )
    inputs = tuple(n for n in names if n not in _RESERVED)
    if name in inputs:
        raise PipelineDefinitionError(f"step {name!r} takes its own output as an input")
    return Step(name=name, fn=fn, kind=kind, inputs=inputs, params_model=params, version=version)


def _conditional(step: Step, when: Callable[..., Any] | None, optional: Sequence[str]) -> Step:
    """``step`` with its condition (whose parameters become inputs) and its optional inputs, checked."""
    if isinstance(optional, str):
        optional = [optional]
    inputs = list(step.inputs)
    if when is not None:
        if not callable(when):
            raise PipelineDefinitionError(f"step {step.name!r}: when= must be a function, got {when!r}")
        for parameter in inspect.signature(when).parameters.values():
            if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                raise PipelineDefinitionError(
                    f"step {step.name!r}: its condition's parameter {str(parameter)!r} is "
                    f"{parameter.kind.description}; name upstream steps, e.g. when=lambda evaluate: ..."
                )
            if parameter.name in _RESERVED or parameter.name == step.name:
                raise PipelineDefinitionError(
                    f"step {step.name!r}: its condition takes {parameter.name!r}; a condition takes upstream steps' "
                    "artifacts by name, e.g. when=lambda evaluate: evaluate.metrics['test_accuracy'] >= 0.95"
                )
            if parameter.name not in inputs:
                inputs.append(parameter.name)
    for name in optional:
        if name not in inputs:
            raise PipelineDefinitionError(
                f"step {step.name!r}: optional={name!r} is not one of its inputs ({', '.join(inputs) or 'none'}); "
                "name an upstream step its function takes"
            )
    return replace(step, inputs=tuple(inputs), when=when, optional=tuple(optional))


def _mapped(step: Step, map_over: str | None) -> Step:
    """``step`` run once per item of ``map_over`` (an input of it whether or not its function names it)."""
    if map_over is None:
        return step
    if not isinstance(map_over, str) or not map_over or map_over in _RESERVED or map_over == step.name:
        raise PipelineDefinitionError(
            f"step {step.name!r}: map_over={map_over!r} must name an upstream step whose Output(items=...) it runs over"
        )
    inputs = step.inputs if map_over in step.inputs else (*step.inputs, map_over)
    return replace(step, inputs=inputs, map_over=map_over)


def _streams(step: Step, declared: Mapping[str, str] | Sequence[str]) -> dict[str, tuple[str, str]]:
    """``datasets=`` of a train step as shard → (upstream step, dataset), checked."""
    if isinstance(declared, str):
        declared = [declared]
    pairs = dict(declared) if isinstance(declared, Mapping) else {item.partition(".")[2]: item for item in declared}
    streams: dict[str, tuple[str, str]] = {}
    for shard, source in pairs.items():
        upstream, dot, dataset = str(source).partition(".")
        if not (shard and upstream and dot and dataset):
            raise PipelineDefinitionError(
                f"step {step.name!r}: datasets entry {source!r} must name STEP.DATASET, e.g. 'prepare.train'"
            )
        if upstream not in step.inputs:
            raise PipelineDefinitionError(
                f"step {step.name!r} streams {source!r} but does not take {upstream!r} as an input; add a parameter "
                f"'{upstream}' to its function"
            )
        streams[shard] = (upstream, dataset)
    return streams


def load_pipeline(spec: str, search_path: str | Path | None = None) -> Pipeline:
    """Import ``'package.module:attribute'`` and return the ``Pipeline`` it names."""
    module_name, _, attr = spec.partition(":")
    root = str(Path(search_path or Path.cwd()).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise ConfigError(
                f"pipeline: cannot import {module_name!r} (no module {e.name!r} under {root}); "
                "run rto from the project directory or fix 'pipeline:' in the config"
            ) from None
        raise ConfigError(  # a dependency of the pipeline's module: Python's own words name it
            f"pipeline {module_name!r} imports a package this Python lacks (ModuleNotFoundError: No module named "
            f"'{e.name}'); install it (pip install …), or on a cluster, into its image or with rto submit --pip"
        ) from None
    pipeline = getattr(module, attr, None)
    if not isinstance(pipeline, Pipeline):
        found = "nothing" if pipeline is None else type(pipeline).__name__
        raise ConfigError(
            f"pipeline: {spec!r} names {found}, not a raytrain_orch Pipeline; point it at your Pipeline object"
        )
    return pipeline
