"""Execute a plan: dispatch ready steps, act on failure decisions, keep the durable record.

One driver thread owns all state: it starts each ready step's attempt on a daemon thread
(which blocks in the backend: a Ray task in its gang, or ``TorchTrainer.fit``), and wakes on
attempt results and on workers' progress events. Every state change is written to
``state.json`` and ``events.jsonl`` and shown through the ``on_event`` callback.

The runner talks to two ports: a ``Backend`` that runs one step attempt (Ray in production,
plain calls in the unit tests) and a ``TrackingSink`` that it tells what happened. The driver
hands it ``RunTree``, which makes MLflow's runs of it (the pipeline run, a child per step
attempt, a grandchild per sweep trial) through the ``Outbox``, so tracking never blocks a
step; without one (``NoTracking``) the run is recorded in its run directory only.
"""

from __future__ import annotations

import difflib
import queue
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Collection, Mapping, Protocol

from raytrain_orch.context import StepContext
from raytrain_orch.core import constants
from raytrain_orch.core.config import PipelineConfig
from raytrain_orch.core.errors import ConfigError, PipelineFailedError, StopRequested
from raytrain_orch.core.events import Event, EventSink
from raytrain_orch.core.pipeline import Pipeline
from raytrain_orch.core.placement import ClusterSpec
from raytrain_orch.core.plan import Plan, StepPlan
from raytrain_orch.core.policy import Failure, decide
from raytrain_orch.core.redact import secret_values
from raytrain_orch.engine.hangs import HangGuard
from raytrain_orch.store.artifacts import MANIFEST, Artifact
from raytrain_orch.store.state import RunState, RunStore, Status, StepState, cache_path, this_driver


class Backend(Protocol):
    def cluster(self) -> ClusterSpec: ...
    def run_step(self, step: StepPlan, fn: Callable, ctx: StepContext, inputs: Mapping[str, Artifact]) -> Artifact: ...
    def drain_events(self) -> list[dict[str, Any]]: ...
    def describe_failure(self, step: str, attempt: int, error: BaseException) -> Failure: ...
    def keep_stacks(self, step: str, attempt: int) -> int:
        """Keep the Python stacks of the attempt's processes in its logs (``attempt-N.stacks.log``);
        return how many processes' stacks were kept."""
        ...

    def end_attempt(self, step: str, attempt: int) -> None:
        """End a running attempt now: its ``run_step`` raises."""
        ...

    def close(self) -> None: ...


class StepRun(Protocol):
    """A step attempt's run in the tracking store, whose id may come later."""

    def wait(self, timeout_s: float) -> str | None: ...


class TrackingSink(Protocol):
    """What the runner tells tracking, in the driver thread; it must never block for long."""

    def begin(self, state: RunState) -> None: ...
    def resume(self, state: RunState) -> None: ...
    def sync(self, state: RunState) -> None: ...
    def finish(self, state: RunState, status: Status) -> None: ...
    def start_step(self, state: RunState, step: StepPlan, attempt: int) -> StepRun: ...
    def reused(self, state: RunState, step: StepPlan, attempt: int, metrics: dict[str, float]) -> None: ...
    def succeeded(self, state: RunState, step: StepPlan, attempt: int, artifact: Artifact) -> None: ...
    def ended(self, step: str, attempt: int, status: Status, error: str | None = None) -> None: ...
    def on_event(self, state: RunState, event: str, record: dict[str, Any]) -> None: ...


class _NoRun:
    def wait(self, timeout_s: float) -> str | None:
        return None


class NoTracking:
    """The sink of a runner without tracking: the run directory is the whole record."""

    def begin(self, state: RunState) -> None:
        pass

    def resume(self, state: RunState) -> None:
        pass

    def sync(self, state: RunState) -> None:
        pass

    def finish(self, state: RunState, status: Status) -> None:
        pass

    def start_step(self, state: RunState, step: StepPlan, attempt: int) -> StepRun:
        return _NoRun()

    def reused(self, state: RunState, step: StepPlan, attempt: int, metrics: dict[str, float]) -> None:
        pass

    def succeeded(self, state: RunState, step: StepPlan, attempt: int, artifact: Artifact) -> None:
        pass

    def ended(self, step: str, attempt: int, status: Status, error: str | None = None) -> None:
        pass

    def on_event(self, state: RunState, event: str, record: dict[str, Any]) -> None:
        pass


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
        tracking: TrackingSink | None = None,
        on_event: EventSink = lambda record: None,
        *,
        use_cache: bool = True,
        rerun: Collection[str] = (),
        driver_info: Mapping[str, Any] | None = None,
    ):
        self.config, self.pipeline, self.plan = config, pipeline, plan
        self.backend, self.store, self.on_event = backend, store, on_event
        self._forced = _forced_steps(plan, use_cache, rerun)
        self._driver_info = dict(driver_info or {})
        self._user_errors: dict[tuple[str, int], Failure] = {}  # reported by train workers
        self._results: queue.Queue[_Attempt] = queue.Queue()
        self._retry_at: dict[str, float] = {}
        self._running: set[str] = set()
        self._notes: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()  # the outbox's, for the driver thread
        self._hangs = HangGuard(backend, self._notes)
        self._ended: RunState | None = None  # the run, once its loop is over
        self.tracking: TrackingSink = tracking if tracking is not None else NoTracking()

    def note(self, event: Event | str, **fields: Any) -> None:
        """The outbox's news (MLflow unreachable, back, an operation dropped), from its thread:
        recorded as events by the driver thread while the run goes on, and at once after it
        ended (when the driver thread only waits for the outbox)."""
        if self._ended is None:
            self._notes.put({"event": event, **fields})
            return
        record = self.store.append_event(self._ended.run_id, event, **fields)
        self.on_event(record)

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
            stopped = isinstance(e, (KeyboardInterrupt, SystemExit))
            self._finish(
                state, Status.KILLED if stopped else Status.FAILED, error=_stop_reason(e) if stopped else repr(e)
            )
            raise
        failed = [name for name, s in state.steps.items() if s.status is Status.FAILED]
        self._finish(state, Status.FAILED if failed else Status.SUCCEEDED)
        if failed:
            errors = "; ".join(f"{n}: {state.steps[n].error}" for n in failed)
            raise PipelineFailedError(f"run {run_id} failed at step(s) {', '.join(failed)} — {errors}")
        return state

    def _begin(self, run_id: str) -> RunState:
        state = RunState(
            run_id=run_id, name=self.config.name, pipeline=self.pipeline.name, config_hash=self.plan.config_hash
        )
        state.driver.update(self._driver_info)
        for step in self.plan.steps:
            state.steps[step.name] = StepState(kind=step.kind, cache_key=step.cache_key)
        storage = self.store.storage
        storage.write_bytes(
            self.config.to_yaml().encode(), *self.store.run_path(run_id, constants.RESOLVED_CONFIG_FILE)
        )
        storage.write_json(self.plan.to_dict(), *self.store.run_path(run_id, constants.PLAN_FILE))

        self.tracking.begin(state)
        state.status = Status.RUNNING
        self._record(
            state,
            Event.RUN_STARTED,
            experiment_id=state.mlflow.get("experiment_id"),
            mlflow_run_id=state.mlflow.get("run_id"),
        )
        return state

    def _resume(self, previous: RunState) -> RunState:
        state = previous
        state.status, state.ended_at, state.error = Status.RUNNING, None, None
        state.driver = {**this_driver(), **self._driver_info}
        steps: dict[str, StepState] = {}
        for step in self.plan.steps:
            old = previous.steps.get(step.name)
            if (
                old is not None
                and old.status.done
                and old.cache_key == step.cache_key
                and self._cached(step) is not None
            ):
                steps[step.name] = old
                continue
            steps[step.name] = StepState(kind=step.kind, cache_key=step.cache_key, attempts=old.attempts if old else 0)
        state.steps = steps
        self.tracking.resume(state)
        kept = [name for name, s in steps.items() if s.status.done]
        self._record(state, Event.RUN_RESUMED, kept=kept, rerun=[n for n in steps if n not in kept])
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
            # Wake for a result, to drain progress, or when the next retry is due (not a poll later).
            due = min(self._retry_at.values(), default=float("inf")) - time.time()
            try:
                attempt = self._results.get(timeout=max(0.01, min(constants.POLL_INTERVAL_S, due)))
            except queue.Empty:
                attempt = None
            self._drain(state)
            self._hangs.check(state)
            if attempt is not None:
                self._settle(state, attempt)

    def _drain(self, state: RunState) -> None:
        """Record the workers' progress events, log their metrics, keep their reports of the
        step's own errors; record the outbox's news."""
        self._drain_notes(state)
        for record in self.backend.drain_events():
            event = record.pop("event")
            self.tracking.on_event(state, event, record)
            if event == Event.USER_ERROR:
                key = (record["step"], record["attempt"])
                self._user_errors.setdefault(
                    key, Failure(*key, "user", record["error_type"], record["message"], record["traceback"])
                )
            s = state.steps.get(record.get("step", ""))
            current = s is not None and s.attempts == record.get("attempt") and s.status.active
            if current and not record.get("trial"):
                self._hangs.saw(record["step"], event)
            if event in (Event.HEARTBEAT, Event.STEP_PROCESS):
                continue  # progress only: nothing to record or show
            if s is None or not current:
                self._record(state, event, save=False, **record)
                continue
            if event == Event.STEP_WAITING:
                s.status, s.waiting = Status.WAITING, record["reason"]
                self._record(state, event, **record)
                continue
            if event == Event.STEP_ADMITTED:
                waited = s.status is Status.WAITING
                s.status, s.waiting = Status.RUNNING, None
                self._record(state, event, save=waited, **record)  # state.json showed WAITING: make it RUNNING again
                continue
            self._record(state, event, save=False, **record)

    def _drain_notes(self, state: RunState) -> None:
        while True:
            try:
                note = self._notes.get_nowait()
            except queue.Empty:
                return
            self._record(state, note.pop("event"), save=False, **note)

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
            if s.status is Status.PENDING and any(
                state.steps[d].status in (Status.FAILED, Status.SKIPPED) for d in step.inputs
            ):
                s.status = Status.SKIPPED
                self._record(state, Event.STEP_SKIPPED, step=step.name, reason="an upstream step failed")

    # --- one attempt --------------------------------------------------------------------------
    def _start(self, state: RunState, step: StepPlan) -> None:
        s = state.steps[step.name]
        cached = None if step.name in self._forced else self._cached(step)
        if cached is not None:
            return self._reuse(state, step, cached)
        s.attempts += 1
        s.status, s.started_at, s.ended_at, s.error = Status.RUNNING, time.time(), None, None
        run = self.tracking.start_step(state, step, s.attempts)
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
            secrets=secret_values(step.params.model_dump(mode="json")) if step.params else (),
            upstream_train_runs=tuple(
                train_run
                for dep in step.inputs
                if state.steps[dep].kind == "train" and (train_run := state.steps[dep].mlflow_run_id) is not None
            ),
        )
        inputs = {dep: Artifact.from_dict(state.steps[dep].artifact or {}) for dep in step.inputs}
        fn = self.pipeline.steps[step.name].fn
        self._running.add(step.name)
        self._hangs.watch(step, s.attempts)
        self._record(
            state,
            Event.STEP_STARTED,
            step=step.name,
            attempt=s.attempts,
            kind=step.kind,
            gang=step.describe_gang(),
            total_epochs=_epochs(step),
            max_attempts=_max_attempts(step),
        )
        threading.Thread(
            target=self._attempt, args=(step, fn, ctx, inputs), name=f"rto-{step.name}", daemon=True
        ).start()

    def _cached(self, step: StepPlan) -> Artifact | None:
        return cached_output(self.store, step)

    def _reuse(self, state: RunState, step: StepPlan, artifact: Artifact) -> None:
        s = state.steps[step.name]
        s.status, s.started_at, s.ended_at = Status.CACHED, time.time(), time.time()
        s.artifact, s.metrics = artifact.to_dict(), dict(artifact.metrics)
        self.tracking.reused(state, step, s.attempts, s.metrics)
        self._record(state, Event.STEP_CACHED, step=step.name, cache_key=step.cache_key, metrics=s.metrics)

    def _attempt(self, step: StepPlan, fn: Callable, ctx: StepContext, inputs: Mapping[str, Artifact]) -> None:
        try:
            self._results.put(_Attempt(step.name, ctx.attempt, result=self.backend.run_step(step, fn, ctx, inputs)))
        except BaseException as e:  # noqa: BLE001 — every outcome goes back to the driver thread
            self._results.put(_Attempt(step.name, ctx.attempt, error=e))

    def _settle(self, state: RunState, attempt: _Attempt) -> None:
        self._running.discard(attempt.step)
        hung = self._hangs.settled(attempt.step, attempt.attempt)
        s = state.steps[attempt.step]
        s.ended_at, s.waiting = time.time(), None
        if attempt.result is not None:
            s.status, s.artifact, s.metrics = Status.SUCCEEDED, attempt.result.to_dict(), dict(attempt.result.metrics)
            self._drain(state)  # the attempt's last epochs, before its run ends
            self.tracking.succeeded(state, self.plan.step(attempt.step), attempt.attempt, attempt.result)
            self._record(
                state,
                Event.STEP_SUCCEEDED,
                step=attempt.step,
                attempt=attempt.attempt,
                metrics=s.metrics,
                duration_s=round(s.duration_s or 0, 3),
            )
            return
        assert attempt.error is not None
        self._drain(state)  # a worker's report of its own error may still be queued
        reported = self._user_errors.pop((attempt.step, attempt.attempt), None)
        if hung is not None:
            self._drain_notes(state)  # its step_hung, before the retry or failure it caused
        failure = hung or reported or self.backend.describe_failure(attempt.step, attempt.attempt, attempt.error)
        decision = decide(failure, self.plan.step(attempt.step).retries)
        s.error = failure.summary()
        self.tracking.ended(attempt.step, attempt.attempt, Status.FAILED, error=s.error)
        if decision.retry:
            s.status = Status.PENDING
            self._retry_at[attempt.step] = time.time() + decision.delay_s
            self._record(
                state,
                Event.STEP_RETRYING,
                step=attempt.step,
                attempt=attempt.attempt,
                error=s.error,
                kind=failure.kind,
                delay_s=round(decision.delay_s, 2),
            )
            return
        s.status = Status.FAILED
        self._record(
            state,
            Event.STEP_FAILED,
            step=attempt.step,
            attempt=attempt.attempt,
            error=s.error,
            kind=failure.kind,
            reason=decision.reason,
            traceback=failure.traceback,
        )

    # --- bookkeeping --------------------------------------------------------------------------
    def _finish(self, state: RunState, status: Status, error: str | None = None) -> None:
        state.status, state.ended_at, state.error = status, time.time(), error
        for name, s in state.steps.items():
            if s.status.active:
                s.status, s.ended_at, s.waiting = Status.KILLED, time.time(), None
                self.tracking.ended(name, s.attempts, Status.KILLED)
                self._record(state, Event.STEP_KILLED, step=name, attempt=s.attempts, save=False)
        self.tracking.finish(state, status)
        self._drain_notes(state)
        self._record(state, Event.RUN_FINISHED, status=status.value, duration_s=round(state.duration_s, 3))

    def _record(self, state: RunState, event: Event | str, save: bool = True, **fields: Any) -> None:
        if event == Event.RUN_FINISHED:
            self._ended = state
        self.tracking.sync(state)
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


def _forced_steps(plan: Plan, use_cache: bool, rerun: Collection[str]) -> set[str]:
    """Steps that must run even with a cache hit: all without the cache, else the rerun ones
    and everything downstream of them."""
    names = [s.name for s in plan.steps]
    if not use_cache:
        return set(names)
    for name in rerun:
        if name not in names:
            hint = difflib.get_close_matches(name, names, n=1)
            raise ConfigError(
                f"--rerun {name!r}: no such step" + (f"; did you mean {hint[0]!r}?" if hint else f"; steps are {names}")
            )
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


def _stop_reason(error: BaseException) -> str:
    """What stopped the driver, for the run's record: Ctrl-C, or the signal the driver was sent."""
    if isinstance(error, StopRequested):
        return f"stopped by {signal.Signals(error.signum).name} (rto stop, ray job stop, or the system)"
    return "interrupted (Ctrl-C)" if isinstance(error, KeyboardInterrupt) else f"exited ({error!r})"
