"""Execute a plan: dispatch ready steps, act on failure decisions, keep the durable record.

One driver thread owns all state: it starts each ready step's attempt on a daemon thread
(which blocks in the backend: a Ray task in its gang, or ``TorchTrainer.fit``), and wakes on
attempt results and on workers' progress events. Every event is recorded in the event log and
shown (``on_event``); one of ``core.events.SAVES_STATE`` saves ``state.json`` after the log
(one of ``FLUSHES_LOG`` writes the log's buffer).

The runner talks to the ports of ``engine.ports``: a ``Backend`` that runs one step attempt and
a ``TrackingSink`` it tells what happened (MLflow's ``RunTree``, which never blocks a step, or
``NoTracking``). Its ``clock`` is every time it reads, so a test can move time by hand.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Callable, Collection, Mapping

from raytrain_orch.context import StepContext
from raytrain_orch.core import constants
from raytrain_orch.core.config import PipelineConfig
from raytrain_orch.core.errors import PipelineFailedError, StepPreempted
from raytrain_orch.core.events import FLUSHES_LOG, SAVES_STATE, Event, EventSink, make
from raytrain_orch.core.pipeline import Pipeline, Step
from raytrain_orch.core.plan import Plan, StepPlan
from raytrain_orch.core.policy import Failure, decide
from raytrain_orch.engine import attempts, readiness
from raytrain_orch.engine.attempts import Outcome, started, step_context
from raytrain_orch.engine.cache import cached_output, forced_steps
from raytrain_orch.engine.hangs import HangGuard
from raytrain_orch.engine.mapping import MappedSteps
from raytrain_orch.engine.ports import Backend, NoTracking, TrackingSink
from raytrain_orch.store.artifacts import Artifact
from raytrain_orch.store.state import RunState, RunStore, Status, StepState, this_driver

Record = Mapping[str, Any]


def _waiting(s: StepState, record: Record) -> bool:
    s.status, s.waiting = Status.WAITING, record["reason"]
    return True


def _admitted(s: StepState, record: Record) -> bool:
    waited = s.status is Status.WAITING
    s.status, s.waiting = Status.RUNNING, None
    return waited  # state.json showed WAITING: make it RUNNING again


#: The events of a running attempt that change its durable status: how, and whether they did.
_STATUS: Mapping[str, Callable[[StepState, Record], bool]] = MappingProxyType(
    {Event.STEP_WAITING: _waiting, Event.STEP_ADMITTED: _admitted}
)
#: Progress only: nothing to record or show.
_UNRECORDED = frozenset({Event.HEARTBEAT, Event.STEP_PROCESS})


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
        clock: Callable[[], float] = time.time,
    ):
        """``clock``: every time the runner reads (when an attempt starts and ends, when a retry
        is due), and its hang guard's; a test's fake one moves time by hand."""
        self.config, self.pipeline, self.plan = config, pipeline, plan
        self.backend, self.store, self.on_event = backend, store, on_event
        self._forced = forced_steps(plan, use_cache, rerun)
        self._driver_info = dict(driver_info or {})
        self._clock = clock
        self._user_errors: dict[tuple[str, int], Failure] = {}  # reported by train workers
        self._results: queue.Queue[Outcome] = queue.Queue()
        self._retry_at: dict[str, float] = {}
        self._running: set[str] = set()
        self._notes: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()  # the outbox's, for the driver thread
        self._hangs = HangGuard(backend, self._notes, clock=clock)
        self._ended: RunState | None = None  # the run, once its loop is over
        self.tracking: TrackingSink = tracking if tracking is not None else NoTracking()
        self._map = MappedSteps(plan, self._forced, clock, self.tracking)  # mapped steps' units

    def note(self, event: Event, **fields: Any) -> None:
        """The outbox's news (MLflow unreachable, back, an operation dropped), from its thread:
        recorded as events by the driver thread while the run goes on, and at once after it
        ended (when the driver thread only waits for the outbox)."""
        record = make(Event(event), **fields)
        if self._ended is None:
            self._notes.put(record)
            return
        self.on_event(self.store.append_event(self._ended.run_id, record))

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
            error = attempts.stop_reason(e) if stopped else repr(e)
            self._finish(state, Status.KILLED if stopped else Status.FAILED, error=error)
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
        attempts.keep_resolved(self.store, run_id, self.config, self.plan)
        self.tracking.begin(state)
        state.status = Status.RUNNING
        mlflow = state.mlflow
        self._record(
            state,
            make(Event.RUN_STARTED, experiment_id=mlflow.get("experiment_id"), mlflow_run_id=mlflow.get("run_id")),
        )
        return state

    def _resume(self, previous: RunState) -> RunState:
        state = previous
        state.status, state.ended_at, state.error = Status.RUNNING, None, None
        state.collected = None  # what it computes again is kept as any run's
        state.driver = {**this_driver(), **self._driver_info}
        state.steps = steps = attempts.resumed(self.plan, previous, self.store)
        self.tracking.resume(state)
        kept = [name for name, s in steps.items() if s.status.done]
        self._record(state, make(Event.RUN_RESUMED, kept=kept, rerun=[n for n in steps if n not in kept]))
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
            due = min(self._retry_at.values(), default=float("inf")) - self._clock()
            try:
                attempt = self._results.get(timeout=max(0.01, min(constants.POLL_INTERVAL_S, due)))
            except queue.Empty:
                attempt = None
            self._drain(state)  # before an attempt is settled: all it sent came before its result
            self._hangs.check(state)
            if attempt is not None:
                self._settle(state, attempt)

    def _drain(self, state: RunState) -> None:
        """Record the workers' progress events, log them to tracking, keep their reports of the
        step's own errors, tell the hang guard of the running attempts' progress; record the
        outbox's news."""
        self._drain_notes(state)
        for record in self.backend.drain_events():
            self.tracking.consume(record)
            if record["event"] == Event.USER_ERROR:
                key = (record["step"], record["attempt"])
                failure = Failure(*key, "user", record["error_type"], record["message"], record["traceback"])
                self._user_errors.setdefault(key, failure)
            s = state.steps.get(record.get("step", ""))
            current = s if s is not None and s.attempts == record.get("attempt") and s.status.active else None
            if current is not None and not record.get("trial"):
                self._hangs.saw(record)
            if record["event"] in _UNRECORDED:
                continue
            change = _STATUS.get(record["event"])
            self._record(state, record, changed=current is not None and change is not None and change(current, record))

    def _drain_notes(self, state: RunState) -> None:
        while True:
            try:
                note = self._notes.get_nowait()
            except queue.Empty:
                return
            self._record(state, note)

    def _ready(self, state: RunState) -> list[StepPlan]:
        now = self._clock()
        ready: list[StepPlan] = []
        starting = set(self._running)  # running, and chosen to start by this pass (max_concurrency counts both)
        for step in self._map.steps():
            s = state.steps[step.name]
            if s.status is not Status.PENDING or step.name in self._running or self._retry_at.get(step.name, 0) > now:
                continue
            settled = all(readiness.settled(step, state, dep) for dep in step.inputs)
            if settled and self._map.may_start(state, step, starting):
                self._retry_at.pop(step.name, None)
                ready.append(step)
                starting.add(step.name)
        return ready

    def _skip_blocked(self, state: RunState) -> None:
        for name, reason in readiness.blocked(self._map.steps(), state):
            state.steps[name].status = Status.SKIPPED
            self._record(state, make(Event.STEP_SKIPPED, step=name, reason=reason))

    # --- one attempt --------------------------------------------------------------------------
    def _start(self, state: RunState, step: StepPlan) -> None:
        s, declared = state.steps[step.name], self.pipeline.steps[self._map.declared(state, step.name)]
        if declared.when is not None and s.parent is None and not self._condition_holds(state, step, declared):
            return
        if step.map_over is not None:  # its items are known: one unit each, started as they are ready
            self.tracking.start_step(state, step, s.attempts + 1)
            return self._record_all(state, self._map.expand(state, step))
        cached = None if step.name in self._forced else cached_output(self.store, step, discard_stale=True)
        if cached is not None:
            return self._reuse(state, step, cached)
        s.attempts += 1
        s.status, s.started_at, s.ended_at, s.error = Status.RUNNING, self._clock(), None, None
        # Not waited for: the step looks its run up if it logs a file or a model itself.
        self.tracking.start_step(state, step, s.attempts)
        s.mlflow_run_id = None  # an earlier attempt's run is not this one's
        ctx = step_context(self.config, self.store, state, step)
        self._running.add(step.name)
        self._hangs.watch(step, s.attempts)
        self._record(state, started(step, s.attempts))
        arguments = (step, declared.fn, ctx, readiness.inputs(step, declared.arguments, state))
        threading.Thread(target=self._attempt, args=arguments, name=f"rto-{step.name}", daemon=True).start()

    def _condition_holds(self, state: RunState, step: StepPlan, declared: Step) -> bool:
        """Decide a conditional step in the driver: false skips it, a raise fails it (its own error)."""
        verdict = readiness.decide(declared.when, readiness.inputs(step, declared.condition_inputs, state))
        if not verdict.run:
            s = state.steps[step.name]
            s.status, s.error = verdict.status, verdict.summary
            self._record(state, readiness.record(step.name, s.attempts, verdict))
        return verdict.run

    def _reuse(self, state: RunState, step: StepPlan, artifact: Artifact) -> None:
        s = state.steps[step.name]
        s.status, s.started_at, s.ended_at = Status.CACHED, self._clock(), self._clock()
        s.artifact, s.metrics = artifact.to_dict(), dict(artifact.metrics)
        self.tracking.reused(state, step, s.attempts, s.metrics)
        self._record(state, make(Event.STEP_CACHED, step=step.name, cache_key=step.cache_key, metrics=s.metrics))

    def _attempt(self, step: StepPlan, fn: Callable, ctx: StepContext, inputs: Mapping[str, Artifact]) -> None:
        try:
            self._results.put(Outcome(step.name, ctx.attempt, result=self.backend.run_step(step, fn, ctx, inputs)))
        except BaseException as e:  # noqa: BLE001 — every outcome goes back to the driver thread
            self._results.put(Outcome(step.name, ctx.attempt, error=e))

    def _settle(self, state: RunState, attempt: Outcome) -> None:
        """An attempt's end. The loop drained the progress events first: its last epochs, and a
        worker's report of its own error, were sent before its result."""
        self._running.discard(attempt.step)
        hung = self._hangs.settled(attempt.step, attempt.attempt)
        s = state.steps[attempt.step]
        s.ended_at, s.waiting = self._clock(), None
        where = {"step": attempt.step, "attempt": attempt.attempt}
        if attempt.result is not None:
            s.status, s.artifact, s.metrics = Status.SUCCEEDED, attempt.result.to_dict(), dict(attempt.result.metrics)
            self.tracking.succeeded(state, self._map.plan_of(attempt.step), attempt.attempt, attempt.result)
            duration = round(s.duration_s or 0, 3)
            self._record(state, make(Event.STEP_SUCCEEDED, **where, metrics=s.metrics, duration_s=duration))
            return
        assert attempt.error is not None
        if isinstance(attempt.error, StepPreempted) and hung is None:
            record = attempts.preempted(s, attempt.step, attempt.attempt, attempt.error)
            self.tracking.ended(attempt.step, attempt.attempt, Status.KILLED, error=s.waiting)
            self._retry_at[attempt.step] = self._clock()  # at once: it waits in the queue, at its place
            return self._record(state, record)
        reported = self._user_errors.pop((attempt.step, attempt.attempt), None)
        if hung is not None:
            self._drain_notes(state)  # its step_hung, before the retry or failure it caused
        failure = hung or reported or self.backend.describe_failure(attempt.step, attempt.attempt, attempt.error)
        failure = replace(failure, attempt=attempts.failures(s, failure.attempt))  # preemptions are no failures
        decision = decide(failure, self._map.plan_of(attempt.step).retries)
        s.error = failure.summary()
        self.tracking.ended(attempt.step, attempt.attempt, Status.FAILED, error=s.error)
        if decision.retry:
            s.status = Status.PENDING
            self._retry_at[attempt.step] = self._clock() + decision.delay_s
            delay = round(decision.delay_s, 2)
            self._record(state, make(Event.STEP_RETRYING, **where, error=s.error, kind=failure.kind, delay_s=delay))
            return
        s.status = Status.FAILED
        failed = make(
            Event.STEP_FAILED,
            **where,
            error=s.error,
            kind=failure.kind,
            reason=decision.reason,
            traceback=failure.traceback,
        )
        self._record(state, failed)

    # --- bookkeeping --------------------------------------------------------------------------
    def _finish(self, state: RunState, status: Status, error: str | None = None) -> None:
        state.status, state.ended_at, state.error = status, self._clock(), error
        for name, s in state.steps.items():
            if s.status.active:
                s.status, s.ended_at, s.waiting = Status.KILLED, self._clock(), None
                self.tracking.ended(name, s.attempts, Status.KILLED)
                self._record(state, make(Event.STEP_KILLED, step=name, attempt=s.attempts))
        self.tracking.finish(state, status)
        self._drain_notes(state)
        duration = round(state.duration_s, 3)
        self._record(state, make(Event.RUN_FINISHED, status=status.value, duration_s=duration))

    def _record(self, state: RunState, record: Record, changed: bool = True) -> None:
        """Record the event, save the state if it changed it (``SAVES_STATE``, and ``changed``), show
        it. A worker's ``ts`` is when it was sent (``sent_ts``); the record's own is when it was recorded."""
        if record["event"] == Event.RUN_FINISHED:
            self._ended = state
        self.tracking.sync(state)
        fields = {k: v for k, v in record.items() if k != "ts"}
        if "ts" in record:
            fields["sent_ts"] = round(record["ts"], 4)
        recorded = self.store.append_event(state.run_id, fields)
        if changed and record["event"] in SAVES_STATE:
            self.store.save(state)
        elif record["event"] in FLUSHES_LOG:
            self.store.flush(state.run_id)
        self.on_event(recorded)
        self._record_all(state, self._map.after(state, dict(record)))  # a unit's end may end its mapped step

    def _record_all(self, state: RunState, records: list[dict[str, Any]]) -> None:
        for record in records:
            self._record(state, record)
