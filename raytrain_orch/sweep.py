"""A sweep step: Ray Tune over full DDP runs of one train step (WORK IN PROGRESS, issue 6).

Each Tune trial is a function trainable that holds almost nothing itself (a 1-byte ``memory``
bundle: Tune refuses an empty one, and a fraction of a CPU per trial would block whole-cluster
gangs), takes an admission lease for the step's gang, and fits a ``TorchTrainer`` that reports
to Tune through ``TuneReportCallback``. Schedulers (ASHA, median stopping) stop trials early
from the per-epoch metric. The best finished trial's artifact becomes the step's artifact, so
downstream steps run once, on the best model.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from functools import partial
from typing import Any, Callable, Mapping

import ray.tune as tune
from ray.tune.integration.ray_train import TuneReportCallback

from . import scheduling
from .artifacts import MANIFEST, Artifact, write_artifact
from .config import SearchDimension, SweepConfig
from .context import StepContext
from .plan import StepPlan

#: A stopped trial's process is killed before its lease is released; a short TTL returns the
#: gang to the queue within seconds.
TRIAL_LEASE_TTL_S = 5.0


def search_space(sweep: SweepConfig) -> dict[str, Any]:
    return {name: _dimension(d) for name, d in sweep.space.items()}


def _dimension(d: SearchDimension) -> Any:
    value = d.value
    return {
        "uniform": lambda: tune.uniform(*value),
        "loguniform": lambda: tune.loguniform(*value),
        "randint": lambda: tune.randint(*value),
        "choice": lambda: tune.choice(list(value)),
        "grid": lambda: tune.grid_search(list(value)),
    }[d.kind]()


def _searcher(sweep: SweepConfig):
    if sweep.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=sweep.seed)
    return tune.search.BasicVariantGenerator(random_state=sweep.seed)


def _scheduler(sweep: SweepConfig, max_epochs: int | None):
    if sweep.scheduler == "asha":
        return tune.schedulers.ASHAScheduler(
            # One past the last epoch: ASHA kills a trial that reaches max_t, and a trial that
            # finishes on its own stores its artifact.
            time_attr="training_iteration", grace_period=sweep.grace_period, reduction_factor=sweep.reduction_factor, max_t=(max_epochs or 100) + 1
        )
    if sweep.scheduler == "median":
        return tune.schedulers.MedianStoppingRule(time_attr="training_iteration", grace_period=sweep.grace_period)
    return tune.schedulers.FIFOScheduler()


def _trial(config: dict[str, Any], *, step: StepPlan, fn: Callable, ctx: StepContext, inputs: Mapping[str, Artifact]) -> None:
    from .train import run_train_step

    trial = tune.get_context().get_trial_name()
    assert step.params is not None
    params = type(step.params).model_validate({**step.params.model_dump(), **config})
    trial_key = hashlib.sha256(f"{step.cache_key}/{trial}".encode()).hexdigest()[:20]  # its own Ray Train run and checkpoints
    trial_step = replace(step, params=params, cache_key=trial_key, sweep=None)
    trial_ctx = replace(ctx, artifact_path=(*ctx.run_path, "sweeps", trial, "artifact"))
    with scheduling.admitted(step.gang, f"{ctx.run_id}/{step.name}/{trial}", ttl_s=TRIAL_LEASE_TTL_S):
        run_train_step(trial_step, fn, trial_ctx, inputs, callbacks=[TuneReportCallback()])


def run_sweep_step(step: StepPlan, fn: Callable, ctx: StepContext, inputs: Mapping[str, Artifact]) -> Artifact:
    sweep = step.sweep
    assert sweep is not None
    storage = ctx.storage
    root = storage.uri(*ctx.run_path, "sweeps")
    name = f"{step.name}-{step.cache_key}"
    trainable = tune.with_resources(partial(_trial, step=step, fn=fn, ctx=ctx, inputs=inputs), {"memory": 1})
    path = f"{root}/{name}"
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True)  # a resumed run: finished trials stay finished
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(sweep),
            tune_config=tune.TuneConfig(
                metric=sweep.metric,
                mode=sweep.mode,
                num_samples=sweep.num_samples,
                search_alg=_searcher(sweep),
                scheduler=_scheduler(sweep, getattr(step.params, "epochs", None)),
                max_concurrent_trials=sweep.max_concurrent_trials,
            ),
            run_config=tune.RunConfig(storage_path=root, name=name, verbose=0),
        )
    tuner.fit()
    best, best_value = None, None
    for trial in storage.listdir(*ctx.run_path, "sweeps"):
        manifest = (*ctx.run_path, "sweeps", trial, "artifact", MANIFEST)
        if not storage.exists(*manifest):
            continue  # stopped early: it stored nothing
        artifact = Artifact.from_dict(storage.read_json(*manifest))
        value = artifact.metrics.get(sweep.metric)
        if value is not None and (best_value is None or (value > best_value if sweep.mode == "max" else value < best_value)):
            best, best_value = artifact, value
    if best is None:
        raise RuntimeError(f"sweep of step {step.name!r}: no trial finished; see the trials' errors in {path}")
    from .artifacts import Output

    return write_artifact(storage, ctx.artifact_path, step.name, Output(metrics=dict(best.metrics)), checkpoint=best.checkpoint)
