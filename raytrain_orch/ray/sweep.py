"""A sweep step: Ray Tune over full DDP runs of one train step.

Each Tune trial is a function trainable that holds almost nothing itself: a 1-byte ``memory``
bundle. Tune refuses an empty bundle, and a fraction of a CPU per trial would block
whole-cluster gangs. The trial takes an admission lease for the step's gang, then fits a
``TorchTrainer`` that reports to Tune through ``TuneReportCallback``. So at most as many trials
train as gangs fit, the rest wait in the queue holding nothing, and schedulers (ASHA, median
stopping) stop trials early from the per-epoch metric.

The best finished trial's artifact becomes the step's artifact, so downstream steps run once,
on the best model.

Durability: Tune's experiment lives in the run directory (``sweeps/STEP-KEY``), so a resumed
run restores it (``Tuner.restore``) and Tune does not start finished trials again. A trial
whose artifact is already stored reports it instead of training, which covers the last few
seconds Tune's experiment snapshot may lag behind.

MLflow: the sweep step's run is the sweep run; each trial is a child run with its params and
per-epoch metrics (logged by the trial's rank 0), and the best trial is tagged ``rto.best``.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from contextvars import ContextVar
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Callable, Mapping

import ray.tune as tune
from ray.tune.integration.ray_train import TuneReportCallback

from raytrain_orch.context import StepContext
from raytrain_orch.core.config import AdmissionConfig
from raytrain_orch.core.events import Event
from raytrain_orch.core.placement import max_concurrent_trials
from raytrain_orch.core.plan import StepPlan
from raytrain_orch.core.redact import redact
from raytrain_orch.core.sweep_config import SearchDimension, SweepConfig
from raytrain_orch.core.text import gist
from raytrain_orch.ray import leases, session
from raytrain_orch.store.artifacts import MANIFEST, Artifact, Output, write_artifact
from raytrain_orch.store.storage import Storage

#: A trial stopped early is killed before it can release its lease; the driver releases it, and
#: a short TTL covers a trial that dies any other way.
TRIAL_LEASE_TTL_S = 5.0

#: Tune settings for sweeps, unless the environment sets them: the run's progress shows the
#: trials (Tune's own console tables would interleave with it), and the experiment state, a few
#: KB, is saved every 2 s rather than every 10 s or more, so a resumed sweep repeats little.
TUNE_ENV = MappingProxyType({"RAY_AIR_NEW_OUTPUT": "0", "TUNE_GLOBAL_CHECKPOINT_S": "2"})


def search_space(sweep: SweepConfig) -> dict[str, Any]:
    """The sweep's space as Tune's sampling domains."""
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


def _searcher(sweep: SweepConfig, concurrency: int):
    """The search algorithm, holding at most ``concurrency`` trials in flight (Tune ignores
    ``max_concurrent_trials`` when handed a ready-made generator, so it is set here)."""
    if sweep.searcher == "optuna":
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study and trial
        return ConcurrencyLimiter(OptunaSearch(seed=sweep.seed), max_concurrent=concurrency)
    return tune.search.BasicVariantGenerator(random_state=sweep.seed, max_concurrent=concurrency)


def _scheduler(sweep: SweepConfig, max_epochs: int | None):
    if sweep.scheduler == "asha":
        return tune.schedulers.ASHAScheduler(
            time_attr="training_iteration",
            grace_period=sweep.grace_period,
            reduction_factor=sweep.reduction_factor,
            # One past the last epoch: ASHA stops a trial that reaches max_t before it returns,
            # and a trial that finishes on its own must return to store its artifact.
            max_t=(max_epochs or 100) + 1,
        )
    if sweep.scheduler == "median":
        return tune.schedulers.MedianStoppingRule(time_attr="training_iteration", grace_period=sweep.grace_period)
    return tune.schedulers.FIFOScheduler()


@dataclass(frozen=True)
class _Sweep:
    """What every trial of one sweep attempt shares (pickled into each trial actor)."""

    step: StepPlan
    fn: Callable
    ctx: StepContext
    inputs: Mapping[str, Artifact]
    root: tuple[str, ...]  # the sweep's directory under the storage root
    admission: AdmissionConfig = AdmissionConfig()  # each trial's place in the cluster's queue

    def artifact_path(self, trial: str) -> tuple[str, ...]:
        return _trial_path(self.root, trial)

    def run(self, config: dict[str, Any]) -> None:
        """One trial: a full DDP run of the step with ``config`` over its params."""
        from raytrain_orch.ray.train import run_train_step  # torch and Ray Train load in the trial, not the driver

        trial = tune.get_context().get_trial_name()
        step, ctx = self.step, replace(self.ctx, trial=trial, artifact_path=self.artifact_path(trial))
        stored = _stored(ctx.storage, self.root, trial)
        if stored is not None:  # finished before the driver restarted
            tune.report(dict(stored.metrics))
            return
        assert step.params is not None
        params = type(step.params).model_validate({**step.params.model_dump(), **config})
        # Each trial is its own Ray Train run, with its own checkpoints.
        key = hashlib.sha256(f"{step.cache_key}/{trial}".encode()).hexdigest()[:20]
        ctx.emit(
            Event.TRIAL_STARTED, params=redact(config)
        )  # the driver opens the trial's MLflow run, a child of the step's
        try:
            label = f"{ctx.run_id}/{step.name}/{trial}"
            queue = self.admission
            with leases.Leases().admitted(  # the trial's own: a stopped trial's is released by the driver
                step.gang,
                label,
                priority=queue.priority,
                timeout_s=queue.timeout_s,
                ttl_s=TRIAL_LEASE_TTL_S,
                ticket=label,
                terms={"queue": queue.queue},  # a trial is never preempted: Tune's schedulers stop trials
            ) as granted:
                ctx.emit(Event.STEP_ADMITTED, waited_s=round(granted["waited_s"], 3))  # the trial's own gang
                run_train_step(
                    replace(step, params=params, cache_key=key, sweep=None),
                    self.fn,
                    ctx,
                    self.inputs,
                    callbacks=[TuneReportCallback()],
                )
        except BaseException as error:
            # A trial a scheduler stops can fail on its way out; the driver keeps such a trial
            # FINISHED (stopped early), whichever of the two events comes first.
            ctx.emit(Event.TRIAL_FAILED, error=f"{type(error).__name__}: {gist(error, line='last')}")
            raise


#: Where the sweep whose ``Tuner.fit`` runs in this context sends progress events. Tune calls its
#: callbacks from that call, in its thread; it pickles them into the experiment state and brings
#: them back on ``Tuner.restore`` with no way to hand them the restarted driver's emitter.
_FITTING: ContextVar[Callable[..., None]] = ContextVar("rto_sweep_emit")


class _TrialEnds(tune.Callback):
    """In the driver, as each trial ends: say how it ended (the runner ends its MLflow run to
    match), and for a trial a scheduler stopped (killed with its process, so it cannot) release
    its lease at once. A trial that stored its artifact ran to the end."""

    def __init__(self, shared: "_Sweep"):
        # Plain values only: Tune pickles its callbacks into the experiment state.
        self.storage_uri, self.root, self.run_id, self.step = (
            shared.ctx.storage_uri,
            shared.root,
            shared.ctx.run_id,
            shared.step.name,
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        name = f"{self.step}_{trial.trial_id}"
        emit = _FITTING.get(lambda *a, **k: None)
        stored = _stored(Storage(self.storage_uri), self.root, name)
        if stored is not None:
            emit(Event.TRIAL_FINISHED, trial=name, metrics=stored.metrics)
            return
        leases.release(f"{self.run_id}/{self.step}/{name}")  # its gang goes back to the queue now, not after the TTL
        epochs = (trial.last_result or {}).get("training_iteration") or 0
        emit(Event.TRIAL_STOPPED, trial=name, epochs=epochs)


def _trial_path(root: tuple[str, ...], trial: str) -> tuple[str, ...]:
    """Where a trial that ran to the end stores its artifact."""
    return (*root, "trials", trial)


def _stored(storage: Storage, root: tuple[str, ...], trial: str) -> Artifact | None:
    """The artifact of a trial that ran to the end, or None (still running, stopped, failed)."""
    manifest = (*_trial_path(root, trial), MANIFEST)
    return Artifact.from_dict(storage.read_json(*manifest)) if storage.exists(*manifest) else None


def run_sweep_step(
    step: StepPlan,
    fn: Callable,
    ctx: StepContext,
    inputs: Mapping[str, Artifact],
    admission: AdmissionConfig | None = None,
) -> Artifact:
    """Run the sweep (or restore it after a driver restart) and return the best trial's artifact."""
    sweep = step.sweep
    assert sweep is not None
    storage = ctx.storage
    name = f"{step.name}-{step.cache_key}"
    shared = _Sweep(
        step, fn, ctx, inputs, root=(*ctx.run_path, "sweeps", name), admission=admission or AdmissionConfig()
    )

    def trial(config: dict[str, Any]) -> None:
        shared.run(config)

    trial.__name__ = step.name  # Tune names trials after their trainable: train_1a2b3_00000
    trainable = tune.with_resources(trial, {"memory": 1})
    path = storage.uri(*shared.root)
    for key, value in TUNE_ENV.items():
        os.environ.setdefault(key, value)
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True)
    else:
        concurrency = sweep.max_concurrent_trials or max_concurrent_trials(sweep, step.gang, session.cluster_spec())
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(sweep),
            tune_config=tune.TuneConfig(
                metric=sweep.metric,
                mode=sweep.mode,
                num_samples=sweep.num_samples,
                search_alg=_searcher(sweep, concurrency),
                scheduler=_scheduler(sweep, getattr(step.params, "epochs", None)),
                # A stopped trial's process must go: its trainer blocks on a report nobody reads.
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                storage_path=storage.uri(*shared.root[:-1]), name=name, verbose=0, callbacks=[_TrialEnds(shared)]
            ),
        )
    fitting = _FITTING.set(ctx.emit)
    try:
        grid = tuner.fit()
    finally:
        _FITTING.reset(fitting)

    trials = [_outcome(grid[i], shared) for i in range(len(grid))]
    finished = [t for t in trials if t["artifact"] is not None and t[sweep.metric] is not None]
    best = (max if sweep.mode == "max" else min)(finished, key=lambda t: t[sweep.metric]) if finished else None
    table = [{k: v for k, v in t.items() if k != "artifact"} | {"best": t is best} for t in trials]
    ctx.emit(Event.SWEEP_FINISHED, metric=sweep.metric, trials=table)
    if best is None:
        errors = [f"{t['trial']}: {t['error']}" for t in trials if t["error"]]
        detail = f"; {errors[0]}" if errors else ""
        raise RuntimeError(
            f"sweep of step {step.name!r}: no trial finished ({len(trials)} run){detail}; Tune's records are in {path}"
        )
    chosen: Artifact = best["artifact"]
    return write_artifact(
        storage, ctx.artifact_path, step.name, Output(metrics=dict(chosen.metrics)), checkpoint=chosen.checkpoint
    )


def _outcome(result: Any, shared: _Sweep) -> dict[str, Any]:
    """One trial as a row of the sweep's table: finished (it stored its artifact), stopped
    early, or failed; its epochs, metric and params."""
    sweep, storage = shared.step.sweep, shared.ctx.storage
    assert sweep is not None
    name = _trial_name(result, shared.step.name)
    artifact = _stored(storage, shared.root, name)
    metrics = artifact.metrics if artifact else (result.metrics or {})
    return {
        "trial": name,
        "status": "failed" if result.error else "finished" if artifact else "stopped",
        "epochs": (result.metrics or {}).get("training_iteration"),
        sweep.metric: metrics.get(sweep.metric),
        "params": {k: result.config.get(k) for k in sweep.space},
        "artifact": artifact,
        "error": gist(result.error, line="last") if result.error is not None else None,
    }


def _trial_name(result: Any, trainable: str) -> str:
    """Tune's trial name (``TRAINABLE_TRIALID``), from the result or, lacking one, its directory."""
    trial_id = (result.metrics or {}).get("trial_id")
    if trial_id:
        return f"{trainable}_{trial_id}"
    match = re.match(rf"{re.escape(trainable)}_[0-9a-f]+(_\d+)?", posixpath.basename(result.path.rstrip("/")))
    return match.group(0) if match else posixpath.basename(result.path.rstrip("/"))
