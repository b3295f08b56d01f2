"""A plan as a run recorded it, planned again from the record and the config alone.

``record(plan)`` keeps, as plain data, what a plan took from the pipeline's module: each step's
kind, inputs, streamed datasets, params and cache key (``Plan.to_dict``'s form, params as they
are). ``replan(config, record)`` makes the same plan from it, with a stand-in pipeline whose
steps cannot be called. A run whose every step is cached needs no more: it is recorded without
importing the module, nor what the module imports (``engine.recorded``). A recorded run's own
``plan.json`` is such a record too, its secret params masked.
"""

from __future__ import annotations

from typing import Any, Mapping, NoReturn

from pydantic import ConfigDict

from raytrain_orch.core.config import PipelineConfig
from raytrain_orch.core.errors import PipelineDefinitionError
from raytrain_orch.core.pipeline import Params, Pipeline, Step
from raytrain_orch.core.plan import Plan, StepPlan, plan_step


class RecordedParams(Params):
    """A step's params as recorded: the values, without the model that validated them."""

    model_config = ConfigDict(extra="allow", frozen=True)


def record(plan: Plan, description: str = "") -> dict[str, Any]:
    """The plan as plain data (JSON), params unmasked: a record is kept beside the run directories,
    which keep the real values too (for resume)."""
    recorded = plan.to_dict()
    recorded["description"] = description
    for step, planned in zip(recorded["steps"], plan.steps, strict=True):
        step["params"] = planned.params.model_dump(mode="json") if planned.params is not None else None
    return recorded


def replan(config: PipelineConfig, recorded: Mapping[str, Any], source: str = "config") -> tuple[Pipeline, Plan]:
    """The plan ``record`` kept, for ``config`` (the config it was made for), and a stand-in for
    its pipeline: the same steps, which raise if a run tries to compute one."""
    pipeline = Pipeline(recorded["pipeline"], recorded.get("description", ""))
    steps: list[StepPlan] = []
    for s in recorded["steps"]:
        step = Step(
            name=s["name"],
            fn=_not_imported,
            kind=s["kind"],
            inputs=tuple(s["inputs"]),
            optional=tuple(s.get("optional", ())),
            datasets={shard: _upstream(stream) for shard, stream in s.get("datasets", {}).items()},
        )
        pipeline.add(step)
        params = RecordedParams(**s["params"]) if s.get("params") is not None else None
        steps.append(plan_step(step, config, params, s["cache_key"], source))
    return pipeline, Plan(pipeline=pipeline.name, config_hash=config.fingerprint(), steps=tuple(steps))


def _upstream(stream: str) -> tuple[str, str]:
    """``STEP.DATASET`` as (step, dataset)."""
    step, _, dataset = stream.partition(".")
    return step, dataset


def _not_imported(**_: Any) -> NoReturn:
    raise PipelineDefinitionError(
        "this step comes from a recorded plan (the pipeline's module was not imported) and cannot run; "
        "run it again with `rto run`, which imports the module when a step must compute"
    )
