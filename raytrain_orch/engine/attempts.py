"""One step attempt as the runner starts it: the context it hands the step, what it announces
(``step_started``), and the outcome its thread sends back."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

from raytrain_orch.context import StepContext
from raytrain_orch.core import constants, sentences
from raytrain_orch.core.config import PipelineConfig
from raytrain_orch.core.errors import StepPreempted, StopRequested
from raytrain_orch.core.events import Event, make
from raytrain_orch.core.plan import Plan, StepPlan
from raytrain_orch.core.redact import secret_values
from raytrain_orch.engine.cache import cached_output
from raytrain_orch.store.artifacts import Artifact
from raytrain_orch.store.state import RunState, RunStore, Status, StepState, cache_path


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
        item=s.item,
        item_index=s.item_index,
        upstream_train_runs=tuple(
            train_run
            for dep in step.inputs
            if state.steps[dep].kind == "train" and (train_run := state.steps[dep].mlflow_run_id) is not None
        ),
    )


def keep_resolved(store: RunStore, run_id: str, config: PipelineConfig, plan: Plan) -> None:
    """The run's resolved config and plan, beside its record (``rto status``, resume, the MLflow run)."""
    store.storage.write_bytes(config.to_yaml().encode(), *store.run_path(run_id, constants.RESOLVED_CONFIG_FILE))
    store.storage.write_json(plan.to_dict(), *store.run_path(run_id, constants.PLAN_FILE))


def resumed(plan: Plan, previous: RunState, store: RunStore) -> dict[str, StepState]:
    """The steps of a resumed run: each finished one whose cache key is unchanged and whose output
    is still whole is kept, the others start afresh (keeping their attempt count). A mapped step's
    units are made again as it runs, their finished items found in the cache."""
    steps: dict[str, StepState] = {}
    for step in plan.steps:
        old = previous.steps.get(step.name)
        if old is not None and old.status.done and old.cache_key == step.cache_key:
            if cached_output(store, step, discard_stale=True) is not None:
                steps[step.name] = old
                continue
        steps[step.name] = StepState(kind=step.kind, cache_key=step.cache_key, attempts=old.attempts if old else 0)
    for name, old in previous.steps.items():  # items' units: their attempts go on where they were
        if old.parent is not None and old.parent in steps and not steps[old.parent].status.done:
            steps[name] = StepState(kind=old.kind, cache_key=old.cache_key, attempts=old.attempts, parent=old.parent)
    return steps


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


def preempted(s: StepState, step: str, attempt: int, error: StepPreempted) -> dict[str, Any]:
    """A preempted attempt's end: the step waits to resume from its checkpoint, at once; no retry
    of ``retries.max`` is spent on it (and Ray Train's ``max_failures`` was not either)."""
    s.status, s.preemptions, s.error = Status.PENDING, s.preemptions + 1, None
    by = error.preempted
    record = make(
        Event.STEP_PREEMPTED,
        step=step,
        attempt=attempt,
        by=by.get("by", "?"),
        priority=by.get("priority", 0),
        queue=by.get("queue", "default"),
        keep=by.get("keep", 0),
        epoch=error.epoch,
    )
    s.waiting = sentences.step_preempted(record)
    return record


def failures(s: StepState, attempt: int) -> int:
    """Which failure of the step ``attempt`` is (its preemptions are not failures)."""
    return attempt - s.preemptions


def stop_reason(error: BaseException) -> str:
    """What stopped the driver, for the run's record: Ctrl-C, or the signal the driver was sent."""
    if isinstance(error, StopRequested):
        return f"stopped by {signal.Signals(error.signum).name} (rto stop, ray job stop, or the system)"
    return "interrupted (Ctrl-C)" if isinstance(error, KeyboardInterrupt) else f"exited ({error!r})"


def _epochs(step: StepPlan) -> int | None:
    value = getattr(step.params, "epochs", None) if step.kind == "train" else None
    return int(value) if isinstance(value, int) else None
