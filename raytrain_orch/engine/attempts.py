"""One step attempt as the runner starts it: the context it hands the step, what it announces
(``step_started``), and the outcome its thread sends back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raytrain_orch.context import StepContext
from raytrain_orch.core.config import PipelineConfig
from raytrain_orch.core.events import Event, make
from raytrain_orch.core.plan import StepPlan
from raytrain_orch.core.redact import secret_values
from raytrain_orch.store.artifacts import Artifact
from raytrain_orch.store.state import RunState, RunStore, cache_path


@dataclass
class Outcome:
    """How an attempt ended, sent from its thread to the driver thread."""

    step: str
    attempt: int
    result: Artifact | None = None
    error: BaseException | None = None


def step_context(config: PipelineConfig, store: RunStore, state: RunState, step: StepPlan) -> StepContext:
    """What the step's current attempt receives as ``ctx``: where it writes, its MLflow run, the
    champion rule, its secrets to mask, the MLflow runs of the train steps it reads."""
    s, champion = state.steps[step.name], config.mlflow.champion
    return StepContext(
        run_id=state.run_id,
        step=step.name,
        attempt=s.attempts,
        storage_uri=store.storage.root_uri,
        run_path=store.run_path(state.run_id),
        artifact_path=cache_path(step.name, step.cache_key),
        tracking_uri=config.mlflow.tracking_uri,
        mlflow_run_id=s.mlflow_run_id,
        mlflow_experiment=config.experiment,
        champion=(champion.alias, champion.metric, champion.mode) if champion else None,
        system_metrics=config.mlflow.system_metrics,
        secrets=secret_values(step.params.model_dump(mode="json")) if step.params else (),
        upstream_train_runs=tuple(
            train_run
            for dep in step.inputs
            if state.steps[dep].kind == "train" and (train_run := state.steps[dep].mlflow_run_id) is not None
        ),
    )


def started(step: StepPlan, attempt: int) -> dict[str, Any]:
    """The ``step_started`` record of an attempt: its gang, its epochs in all, its attempts in all."""
    return make(
        Event.STEP_STARTED,
        step=step.name,
        attempt=attempt,
        kind=step.kind,
        gang=step.describe_gang(),
        total_epochs=_epochs(step),
        max_attempts=1 + step.retries.max,  # the first and its retries
    )


def _epochs(step: StepPlan) -> int | None:
    value = getattr(step.params, "epochs", None) if step.kind == "train" else None
    return int(value) if isinstance(value, int) else None
