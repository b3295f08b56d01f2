"""Execute a plan: dispatch ready steps, act on failure decisions, keep the durable record.

One driver thread owns all state: it starts each ready step's attempt on a daemon thread
(which blocks in the backend: a Ray task in its gang, or ``TorchTrainer.fit``), and wakes on
attempt results and on workers' progress events. Every state change is written to
``state.json`` and ``events.jsonl`` and shown through the ``on_event`` callback.

The driver is MLflow's one writer (through ``Outbox``, so tracking never blocks a step): every
step attempt is a child run of the pipeline run, every sweep trial a child of its step's run;
workers' metrics arrive as events and are logged to the run they belong to; every run ends in a
terminal status.
"""

from __future__ import annotations

import difflib
import json
import queue
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Protocol

from . import constants
from .artifacts import MANIFEST, Artifact
from .charts import epoch_series, learning_curves
from .checkpoint import MANIFEST as CHECKPOINT_MANIFEST
from .config import PipelineConfig
from .context import StepContext
from .errors import ConfigError, PipelineFailedError
from .pipeline import Pipeline
from .plan import ClusterSpec, Plan, StepPlan
from .policy import Failure, decide
from .outbox import Outbox, Ref
from .state import RunState, RunStore, StepState, Status, cache_path, this_driver
from .storage import Storage
from .tracking import FAILED, FINISHED, KILLED, git_commit, ray_job_id

EventSink = Callable[[dict[str, Any]], None]


class Backend(Protocol):
    def cluster(self) -> ClusterSpec: ...
    def run_step(self, step: StepPlan, fn: Callable, ctx: StepContext, inputs: Mapping[str, Artifact]) -> Artifact: ...
    def drain_events(self) -> list[dict[str, Any]]: ...
    def describe_failure(self, step: str, attempt: int, error: BaseException) -> Failure: ...


@dataclass
class _Attempt:
    step: str
    attempt: int
    result: Artifact | None = None
    error: BaseException | None = None


class Runner:
    def __init__(
        self,
        config: PipelineConfig,
        pipeline: Pipeline,
        plan: Plan,
        backend: Backend,
        store: RunStore,
        tracking: Outbox | None,
        on_event: EventSink = lambda record: None,
        *,
        use_cache: bool = True,
        rerun: Collection[str] = (),
        driver_info: Mapping[str, Any] | None = None,
    ):
        self.config, self.pipeline, self.plan = config, pipeline, plan
        self.backend, self.store, self.tracking, self.on_event = backend, store, tracking, on_event
        self._forced = _forced_steps(plan, use_cache, rerun)
        self._driver_info = dict(driver_info or {})
        self._user_errors: dict[tuple[str, int], Failure] = {}  # reported by train workers
        self._results: queue.Queue[_Attempt] = queue.Queue()
        self._retry_at: dict[str, float] = {}
        self._running: set[str] = set()
        self._notes: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()  # the outbox's, for the driver thread
        self._experiment: Ref | None = None
        self._parent: Ref | None = None
        self._runs: dict[tuple[str, int], Ref] = {}  # (step, attempt) → its MLflow run
        self._trials: dict[tuple[str, int, str], Ref] = {}  # (step, attempt, trial) → its MLflow run
        self._trials_open: set[tuple[str, int, str]] = set()

    def note(self, event: str, **fields: Any) -> None:
        """The outbox's news (MLflow unreachable, back, an operation dropped), from its thread:
        recorded as events by the driver thread."""
        self._notes.put({"event": event, **fields})

    # --- the run ------------------------------------------------------------------------------
    def run(self, run_id: str, resume: RunState | None = None) -> RunState:
        """Execute every step; return the final state, or raise ``PipelineFailedError``.

        With ``resume`` (the record of an interrupted or failed run), finished steps whose cache
        key is unchanged are kept, the rest run again, and the run keeps its id and MLflow run.
        """
        state = self._resume(resume) if resume is not None else self._begin(run_id)
        try:
            self._loop(state)
        except BaseException as e:  # Ctrl-C, SIGTERM (as SystemExit), or a bug of ours
            self._finish(state, Status.KILLED if isinstance(e, (KeyboardInterrupt, SystemExit)) else Status.FAILED, error=repr(e))
            raise
        failed = [name for name, s in state.steps.items() if s.status is Status.FAILED]
        self._finish(state, Status.FAILED if failed else Status.SUCCEEDED)
        if failed:
            errors = "; ".join(f"{n}: {state.steps[n].error}" for n in failed)
            raise PipelineFailedError(f"run {run_id} failed at step(s) {', '.join(failed)} — {errors}")
        return state

    def _begin(self, run_id: str) -> RunState:
        state = RunState(run_id=run_id, name=self.config.name, pipeline=self.pipeline.name, config_hash=self.plan.config_hash)
        state.driver.update(self._driver_info)
        for step in self.plan.steps:
            state.steps[step.name] = StepState(kind=step.kind, cache_key=step.cache_key)
        storage = self.store.storage
        storage.write_bytes(self.config.to_yaml().encode(), *self.store.run_path(run_id, constants.RESOLVED_CONFIG_FILE))
        storage.write_json(self.plan.to_dict(), *self.store.run_path(run_id, constants.PLAN_FILE))

        tracking = self._tracking()
        self._experiment = tracking.experiment(self.config.experiment)
        self._parent = tracking.start_run(self._experiment, run_id, self._tags(run_id, kind="pipeline"))
        tracking.log_params(self._parent, self.config.model_dump(mode="json"))
        tracking.log_text(self._parent, self.config.to_yaml(), "config.yaml")
        tracking.log_text(self._parent, json.dumps(self.plan.to_dict(), indent=2), "plan.json")
        state.mlflow = {"tracking_uri": tracking.tracking_uri, "experiment_id": None, "run_id": None}
        self._parent.wait(constants.TRACKING_START_WAIT_S)  # its id belongs in the record; an outage fills it in later
        self._sync_ids(state)
        state.status = Status.RUNNING
        self._record(state, "run_started", experiment_id=state.mlflow["experiment_id"], mlflow_run_id=state.mlflow["run_id"])
        return state

    def _tags(self, run_id: str, **more: str) -> dict[str, str]:
        """What every MLflow run of this pipeline run is tagged with."""
        if not hasattr(self, "_common_tags"):
            commit, job = git_commit(), ray_job_id()
            self._common_tags = {"rto.pipeline": self.pipeline.name, "rto.config_hash": self.plan.config_hash}
            if commit:
                self._common_tags.update({"rto.git_commit": commit, "mlflow.source.git.commit": commit})
            if job:
                self._common_tags["rto.ray_job_id"] = job
        return {"rto.run_id": run_id, **self._common_tags, **{f"rto.{k}": v for k, v in more.items()}}

    def _tracking(self) -> Outbox:
        assert self.tracking is not None, "this runner was built without tracking"
        return self.tracking

    def _sync_ids(self, state: RunState) -> None:
        """Copy MLflow ids the outbox has created since into the record."""
        if self._parent is not None and state.mlflow.get("run_id") is None and self._parent.id is not None:
            state.mlflow.update(experiment_id=self._experiment.id, run_id=self._parent.id)
        for name, s in state.steps.items():
            ref = self._runs.get((name, s.attempts))
            if ref is not None and ref.id is not None and s.mlflow_run_id != ref.id:
                s.mlflow_run_id = ref.id

    def _resume(self, previous: RunState) -> RunState:
        state = previous
        state.status, state.ended_at, state.error = Status.RUNNING, None, None
        state.driver = {**this_driver(), **self._driver_info}
        steps: dict[str, StepState] = {}
        for step in self.plan.steps:
            old = previous.steps.get(step.name)
            if old is not None and old.status.done and old.cache_key == step.cache_key and self._cached(step) is not None:
                steps[step.name] = old
                continue
            steps[step.name] = StepState(kind=step.kind, cache_key=step.cache_key, attempts=old.attempts if old else 0)
        state.steps = steps
        tracking = self._tracking()
        # Runs its dead driver left open (steps, trials) end KILLED; the pipeline run goes on.
        tracking.call(lambda store: store.end_open_runs(state.mlflow.get("experiment_id"), state.run_id, KILLED, keep=state.mlflow.get("run_id")))
        self._experiment = Ref(self.config.experiment, state.mlflow.get("experiment_id")) if state.mlflow.get("experiment_id") else tracking.experiment(self.config.experiment)
        if state.mlflow.get("run_id"):
            self._parent = Ref(state.run_id, state.mlflow["run_id"])
            tracking.reopen_run(self._parent)
        else:  # MLflow was out for the whole of the earlier driver's life
            self._parent = tracking.start_run(self._experiment, state.run_id, self._tags(state.run_id, kind="pipeline"))
            self._parent.wait(constants.TRACKING_START_WAIT_S)
            self._sync_ids(state)
        kept = [name for name, s in steps.items() if s.status.done]
        self._record(state, "run_resumed", kept=kept, rerun=[n for n in steps if n not in kept])
        return state

    def _loop(self, state: RunState) -> None:
        while True:
            self._skip_blocked(state)
            ready = self._ready(state)
            for step in ready:
                self._start(state, step)
            if ready and not self._running:
                continue  # all were cache hits: their downstream steps may be ready now
            if not self._running and not self._retry_at:
                return
            try:
                attempt = self._results.get(timeout=constants.POLL_INTERVAL_S)
            except queue.Empty:
                attempt = None
            self._drain(state)
            if attempt is not None:
                self._settle(state, attempt)

    def _drain(self, state: RunState) -> None:
        """Record the workers' progress events, log their metrics, keep their reports of the
        step's own errors; record the outbox's news."""
        while True:
            try:
                note = self._notes.get_nowait()
            except queue.Empty:
                break
            self._record(state, note.pop("event"), save=False, **note)
        for record in self.backend.drain_events():
            event = record.pop("event")
            if self.tracking is not None:
                self._track(state, event, record)
            if event == "user_error":
                key = (record["step"], record["attempt"])
                self._user_errors.setdefault(key, Failure(*key, "user", record["error_type"], record["message"], record["traceback"]))
            s = state.steps.get(record.get("step", ""))
            current = s is not None and s.attempts == record.get("attempt") and s.status.active
            if event == "step_waiting" and current:
                s.status, s.waiting = Status.WAITING, record["reason"]
                self._record(state, event, **record)
                continue
            if event == "step_admitted" and current:
                waited = s.status is Status.WAITING
                s.status, s.waiting = Status.RUNNING, None
                self._record(state, event, save=waited, **record)  # state.json showed WAITING: make it RUNNING again
                continue
            self._record(state, event, save=False, **record)

    def _track(self, state: RunState, event: str, r: dict[str, Any]) -> None:
        """Log what a worker's event says to the MLflow run it belongs to."""
        tracking, step, attempt, trial = self._tracking(), r.get("step", ""), r.get("attempt", 0), r.get("trial")
        run = self._trials.get((step, attempt, trial)) if trial else self._runs.get((step, attempt))
        if event == "trial_started" and (step, attempt) in self._runs:
            key = (step, attempt, trial)
            self._trials[key] = tracking.start_run(self._experiment, trial, self._tags(state.run_id, step=step, attempt=str(attempt), kind="trial", trial=trial), parent=self._runs[(step, attempt)])
            tracking.log_params(self._trials[key], r.get("params") or {})
            self._trials_open.add(key)
        elif event in ("epoch", "metrics") and run is not None:
            index = r.get("epoch") if event == "epoch" else r.get("index")
            tracking.log_metrics(run, {**(r.get("metrics") or {}), **(r.get("perf") or {})}, step=index, ts=r.get("ts"))
        elif event in ("trial_finished", "trial_stopped", "trial_failed") and run is not None:
            self._end_trial(state, (step, attempt, trial), event.removeprefix("trial_"), epochs=r.get("epochs"), error=r.get("error"))
        elif event == "sweep_finished" and (step, attempt) in self._runs:
            for row in r.get("trials") or []:
                self._end_trial(state, (step, attempt, row["trial"]), row["status"], epochs=row.get("epochs"), error=row.get("error"))
                if row.get("best") and (step, attempt, row["trial"]) in self._trials:
                    tracking.set_tags(self._trials[(step, attempt, row["trial"])], {"rto.best": "true"})
                    tracking.set_tags(self._runs[(step, attempt)], {"rto.best_trial": row["trial"], "rto.best_params": json.dumps(row.get("params"), sort_keys=True)})

    def _end_trial(self, state: RunState, key: tuple[str, int, str], how: str, epochs: int | None = None, error: str | None = None) -> None:
        """End a trial's run: FINISHED when it ran to the end or a scheduler stopped it early
        (tagged so), FAILED when it failed. A stop outranks the failure it may cause on the way out."""
        run = self._trials.get(key)
        if run is None or (key not in self._trials_open and how != "stopped"):
            return
        tracking = self._tracking()
        if how == "stopped":
            tracking.set_tags(run, {"rto.stopped_early": "true", "rto.epochs": str(epochs)})
        elif how == "failed" and error:
            tracking.set_tags(run, {"rto.error": str(error)[:5000]})
        tracking.end_run(run, FAILED if how == "failed" else FINISHED)
        self._trials_open.discard(key)

    def _ready(self, state: RunState) -> list[StepPlan]:
        now = time.time()
        ready = []
        for step in self.plan.steps:
            s = state.steps[step.name]
            if s.status is not Status.PENDING or step.name in self._running or self._retry_at.get(step.name, 0) > now:
                continue
            if all(state.steps[dep].status.done for dep in step.inputs):
                self._retry_at.pop(step.name, None)
                ready.append(step)
        return ready

    def _skip_blocked(self, state: RunState) -> None:
        for step in self.plan.steps:
            s = state.steps[step.name]
            if s.status is Status.PENDING and any(state.steps[d].status in (Status.FAILED, Status.SKIPPED) for d in step.inputs):
                s.status = Status.SKIPPED
                self._record(state, "step_skipped", step=step.name, reason="an upstream step failed")

    # --- one attempt --------------------------------------------------------------------------
    def _start(self, state: RunState, step: StepPlan) -> None:
        s = state.steps[step.name]
        cached = None if step.name in self._forced else self._cached(step)
        if cached is not None:
            return self._reuse(state, step, cached)
        s.attempts += 1
        s.status, s.started_at, s.ended_at, s.error = Status.RUNNING, time.time(), None, None
        run = self._step_run(state, step, s.attempts)
        # The step's own register_model/log_artifact calls need the run's id; in an MLflow outage
        # the step starts without it rather than wait.
        s.mlflow_run_id = run.wait(constants.TRACKING_START_WAIT_S)
        champion = self.config.mlflow.champion
        ctx = StepContext(
            run_id=state.run_id,
            step=step.name,
            attempt=s.attempts,
            storage_uri=self.store.storage.root_uri,
            run_path=self.store.run_path(state.run_id),
            artifact_path=cache_path(step.name, step.cache_key),
            tracking_uri=self.config.mlflow.tracking_uri,
            mlflow_run_id=s.mlflow_run_id,
            champion=(champion.alias, champion.metric, champion.mode) if champion else None,
            system_metrics=self.config.mlflow.system_metrics,
        )
        inputs = {dep: Artifact.from_dict(state.steps[dep].artifact or {}) for dep in step.inputs}
        fn = self.pipeline.steps[step.name].fn
        self._running.add(step.name)
        self._record(
            state, "step_started", step=step.name, attempt=s.attempts, kind=step.kind, gang=step.gang.describe(), total_epochs=_epochs(step), max_attempts=_max_attempts(step)
        )
        threading.Thread(target=self._attempt, args=(step, fn, ctx, inputs), name=f"rto-{step.name}", daemon=True).start()

    def _cached(self, step: StepPlan) -> Artifact | None:
        return cached_output(self.store, step)

    def _reuse(self, state: RunState, step: StepPlan, artifact: Artifact) -> None:
        s = state.steps[step.name]
        s.status, s.started_at, s.ended_at = Status.CACHED, time.time(), time.time()
        s.artifact, s.metrics = artifact.to_dict(), dict(artifact.metrics)
        run, tracking = self._step_run(state, step, s.attempts, cached=True), self._tracking()
        tracking.log_metrics(run, s.metrics)
        tracking.log_metrics(self._parent, s.metrics)
        tracking.end_run(run, FINISHED)
        self._record(state, "step_cached", step=step.name, cache_key=step.cache_key, metrics=s.metrics)

    def _step_run(self, state: RunState, step: StepPlan, attempt: int, cached: bool = False) -> Ref:
        """The step attempt's MLflow run: a child of the pipeline run."""
        tracking = self._tracking()
        tags = self._tags(state.run_id, step=step.name, attempt=str(attempt), kind=step.kind, cache_key=step.cache_key, cached=str(cached).lower())
        run = self._runs[(step.name, attempt)] = tracking.start_run(self._experiment, step.name, tags, parent=self._parent)
        if step.params is not None:
            tracking.log_params(run, step.params.model_dump(mode="json"))
        return run

    def _log_outputs(self, state: RunState, step: StepPlan, run: Ref, artifact: Artifact) -> None:
        """What a finished attempt leaves in its MLflow run: a task's metrics and files; a train
        step's learning curves and chosen checkpoint's manifest; a sweep's curves per trial."""
        tracking = self._tracking()
        if step.kind != "train" or step.sweep is not None:
            tracking.log_metrics(run, artifact.metrics)
        if artifact.files:
            remote = artifact.storage.local_path() is None  # downloaded for MLflow: removed after
            tracking.log_files(run, artifact.files_dir, cleanup=remote)
        if step.kind != "train":
            return
        run_id, store = state.run_id, self.store

        def curves() -> Path | None:
            swept = step.sweep is not None
            series = epoch_series(store.events(run_id), step.name, by_trial=swept)
            title = f"{step.name}: " + (f"{len(series)} trials" if swept else "learning curves")
            chart = learning_curves(series, Path(tempfile.mkdtemp(prefix="rto-curves-")) / "learning_curves.png", title)
            return chart.parent if chart else None

        tracking.log_files(run, curves, cleanup=True)
        if artifact.checkpoint:
            manifest = Storage(artifact.checkpoint).read_bytes(CHECKPOINT_MANIFEST).decode()
            tracking.log_text(run, manifest, f"checkpoint/{CHECKPOINT_MANIFEST}")

    def _attempt(self, step: StepPlan, fn: Callable, ctx: StepContext, inputs: Mapping[str, Artifact]) -> None:
        try:
            self._results.put(_Attempt(step.name, ctx.attempt, result=self.backend.run_step(step, fn, ctx, inputs)))
        except BaseException as e:  # noqa: BLE001 — every outcome goes back to the driver thread
            self._results.put(_Attempt(step.name, ctx.attempt, error=e))

    def _settle(self, state: RunState, attempt: _Attempt) -> None:
        self._running.discard(attempt.step)
        s = state.steps[attempt.step]
        s.ended_at, s.waiting = time.time(), None
        run, tracking = self._runs[(attempt.step, attempt.attempt)], self._tracking()
        if attempt.result is not None:
            s.status, s.artifact, s.metrics = Status.SUCCEEDED, attempt.result.to_dict(), dict(attempt.result.metrics)
            self._drain(state)  # the attempt's last epochs, before its run ends
            self._log_outputs(state, self.plan.step(attempt.step), run, attempt.result)
            tracking.log_metrics(self._parent, s.metrics)
            tracking.end_run(run, FINISHED)
            self._record(state, "step_succeeded", step=attempt.step, attempt=attempt.attempt, metrics=s.metrics, duration_s=round(s.duration_s or 0, 3))
            return
        assert attempt.error is not None
        self._drain(state)  # a worker's report of its own error may still be queued
        reported = self._user_errors.pop((attempt.step, attempt.attempt), None)
        failure = reported or self.backend.describe_failure(attempt.step, attempt.attempt, attempt.error)
        decision = decide(failure, self.plan.step(attempt.step).retries)
        s.error = failure.summary()
        tracking.set_tags(run, {"rto.error": s.error[:5000]})
        tracking.end_run(run, FAILED)
        if decision.retry:
            s.status = Status.PENDING
            self._retry_at[attempt.step] = time.time() + decision.delay_s
            self._record(state, "step_retrying", step=attempt.step, attempt=attempt.attempt, error=s.error, kind=failure.kind, delay_s=round(decision.delay_s, 2))
            return
        s.status = Status.FAILED
        self._record(state, "step_failed", step=attempt.step, attempt=attempt.attempt, error=s.error, kind=failure.kind, reason=decision.reason, traceback=failure.traceback)

    # --- bookkeeping --------------------------------------------------------------------------
    def _finish(self, state: RunState, status: Status, error: str | None = None) -> None:
        state.status, state.ended_at, state.error = status, time.time(), error
        tracking = self._tracking()
        for name, s in state.steps.items():
            if s.status.active:
                s.status, s.ended_at, s.waiting = Status.KILLED, time.time(), None
                if (name, s.attempts) in self._runs:
                    tracking.end_run(self._runs[(name, s.attempts)], KILLED)
                self._record(state, "step_killed", step=name, attempt=s.attempts, save=False)
        for key in list(self._trials_open):
            tracking.end_run(self._trials[key], KILLED)
            self._trials_open.discard(key)
        mlflow_status = {Status.SUCCEEDED: FINISHED, Status.KILLED: KILLED}.get(status, FAILED)
        if self._parent is not None:
            tracking.end_run(self._parent, mlflow_status)
        self._record(state, "run_finished", status=status.value, duration_s=round(state.duration_s, 3))

    def _record(self, state: RunState, event: str, save: bool = True, **fields: Any) -> None:
        self._sync_ids(state)
        if save:
            self.store.save(state)
        sent = fields.pop("ts", None)  # when a worker sent it; the record's own ts is when it was recorded
        if sent is not None:
            fields["sent_ts"] = round(sent, 4)
        record = self.store.append_event(state.run_id, event, **fields)
        self.on_event(record)


def steps_to_compute(plan: Plan, store: RunStore, use_cache: bool = True, rerun: Collection[str] = ()) -> list[str]:
    """The steps a run must execute: those forced, and those with no stored identical output."""
    forced = _forced_steps(plan, use_cache, rerun)
    return [s.name for s in plan.steps if s.name in forced or cached_output(store, s) is None]


def cached_output(store: RunStore, step: StepPlan) -> Artifact | None:
    """The stored output of an earlier identical step, if complete (its manifest is written last)."""
    path = (*cache_path(step.name, step.cache_key), MANIFEST)
    return Artifact.from_dict(store.storage.read_json(*path)) if store.storage.exists(*path) else None


class NoCompute:
    """The backend of a run whose every step is a cache hit: nothing runs, so no Ray is needed."""

    def cluster(self) -> ClusterSpec:
        return ClusterSpec()

    def run_step(self, step: StepPlan, fn: Callable, ctx: StepContext, inputs: Mapping[str, Artifact]) -> Artifact:
        raise RuntimeError(f"step {step.name} needs compute, but the run was planned as fully cached")

    def drain_events(self) -> list[dict[str, Any]]:
        return []

    def describe_failure(self, step: str, attempt: int, error: BaseException) -> Failure:
        return Failure(step, attempt, "infra", type(error).__name__, str(error))

    def close(self) -> None:
        pass


def _forced_steps(plan: Plan, use_cache: bool, rerun: Collection[str]) -> set[str]:
    """Steps that must run even with a cache hit: all without the cache, else the rerun ones
    and everything downstream of them."""
    names = [s.name for s in plan.steps]
    if not use_cache:
        return set(names)
    for name in rerun:
        if name not in names:
            hint = difflib.get_close_matches(name, names, n=1)
            raise ConfigError(f"--rerun {name!r}: no such step" + (f"; did you mean {hint[0]!r}?" if hint else f"; steps are {names}"))
    forced = set(rerun)
    for name in rerun:
        forced |= plan.downstream(name)
    return forced


def _max_attempts(step: StepPlan) -> int:
    """The attempts a step may take: the first and its retries."""
    return 1 + step.retries.max


def _epochs(step: StepPlan) -> int | None:
    value = getattr(step.params, "epochs", None) if step.kind == "train" else None
    return int(value) if isinstance(value, int) else None
