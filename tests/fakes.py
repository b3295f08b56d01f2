"""A backend for the runner without Ray: each step attempt is a plain call of the step's
function, in the runner's attempt thread, with outcomes scripted per step and attempt."""

from __future__ import annotations

import hashlib
import queue
import shutil
import sys
import tempfile
import threading
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

from raytrain_orch.context import StepContext
from raytrain_orch.core.placement import ClusterSpec
from raytrain_orch.core.plan import StepPlan
from raytrain_orch.core.policy import Failure
from raytrain_orch.store.artifacts import CHECKPOINT_STATE_FILE, Artifact, Output, write_artifact
from raytrain_orch.store.checkpoint import MANIFEST, train_run_name
from raytrain_orch.store.steplogs import stacks_parts


class InfraFault(Exception):
    """What a lost worker looks like to the fake: the cluster's fault, not the step's."""


#: An attempt's scripted outcome: None runs the step's function; an exception is raised instead;
#: a callable is called with the attempt's context first (to wait, to signal), then the function runs.
Outcome = BaseException | Callable[[StepContext], None] | None


_ENDED: dict[tuple[str, str, int], threading.Event] = {}
_ENDED_LOCK = threading.Lock()


def _ended(ctx: StepContext) -> threading.Event:
    with _ENDED_LOCK:
        return _ENDED.setdefault((ctx.storage_uri, ctx.step, ctx.attempt), threading.Event())


def block_until_ended(ctx: StepContext) -> None:
    """What a hung step does, in a scripted outcome: block until the runner ends its attempt
    (``FakeBackend.end_attempt``), as Ray ends a real one's processes."""
    _ended(ctx).wait()


class FakeBackend:
    """``checkpoints``: steps whose artifact gets a checkpoint, written where Ray Train writes a
    train step's (``runs/RUN_ID/checkpoints/STEP-KEY/checkpoint_*/``, with its manifest)."""

    def __init__(self, script: Mapping[str, list[Outcome]] | None = None, checkpoints: tuple[str, ...] = ()):
        self.script = {step: list(outcomes) for step, outcomes in (script or {}).items()}
        self.checkpoints = checkpoints
        self.calls: list[tuple[str, int]] = []
        self._events: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: dict[tuple[str, int], tuple[int, StepContext]] = {}  # attempt → (its thread, its ctx)
        self.ended: list[tuple[str, int]] = []  # attempts end_attempt ended

    def cluster(self) -> ClusterSpec:
        return ClusterSpec(nodes=({"CPU": 8.0},))

    def run_step(self, step: StepPlan, fn: Callable, ctx: StepContext, inputs: Mapping[str, Artifact]) -> Artifact:
        ctx = replace(ctx, events=self._events)  # the runner's progress channel: a heartbeat, a metric reach it
        with self._lock:
            self.calls.append((step.name, ctx.attempt))
            self._threads[(step.name, ctx.attempt)] = (threading.get_ident(), ctx)
        outcomes = self.script.get(step.name, [])
        outcome = outcomes[ctx.attempt - 1] if ctx.attempt <= len(outcomes) else None
        if isinstance(outcome, BaseException):
            raise outcome
        self.emit(event="step_process", step=step.name, attempt=ctx.attempt)  # the step's code starts
        if outcome is not None:
            outcome(ctx)
        if _ended(ctx).is_set():
            raise InfraFault(f"{step.name} attempt {ctx.attempt} was ended")
        output_dir = Path(tempfile.mkdtemp(prefix=f"fake-{step.name}-"))
        try:
            kwargs: dict[str, Any] = {"ctx": replace(ctx, output_dir=output_dir), **inputs}
            if step.params is not None:
                kwargs["params"] = step.params
            output = Output.coerce(fn(**kwargs), step.name)
            checkpoint = _checkpoint(step, ctx) if step.name in self.checkpoints else None
            return write_artifact(
                ctx.storage, ctx.artifact_path, step.name, output, files_dir=output_dir, checkpoint=checkpoint
            )
        finally:
            shutil.rmtree(output_dir, ignore_errors=True)

    def emit(self, **record: Any) -> None:
        """A progress event, as a worker would send it."""
        self._events.put(record)

    def drain_events(self) -> list[dict[str, Any]]:
        drained = []
        while True:
            try:
                drained.append(self._events.get_nowait())
            except queue.Empty:
                return drained

    def describe_failure(self, step: str, attempt: int, error: BaseException) -> Failure:
        kind = "infra" if isinstance(error, InfraFault) else "user"
        return Failure(step, attempt, kind, type(error).__name__, str(error))

    def keep_stacks(self, step: str, attempt: int) -> int:
        """The attempt's thread's stack, as the Ray backend keeps its processes'."""
        ident, ctx = self._threads[(step, attempt)]
        frame = sys._current_frames()[ident]
        text = f"--- the step's process ---\n{''.join(traceback.format_stack(frame))}"
        ctx.storage.write_bytes(text.encode(), *stacks_parts(ctx.run_path, step, attempt))
        return 1

    def end_attempt(self, step: str, attempt: int) -> None:
        self.ended.append((step, attempt))
        _ended(self._threads[(step, attempt)][1]).set()

    def close(self) -> None:
        pass


def _checkpoint(step: StepPlan, ctx: StepContext) -> str:
    """A checkpoint of ``step`` as Ray Train leaves one on storage: ``state.pt`` and its manifest."""
    state = f"{step.name} {step.cache_key} attempt {ctx.attempt}".encode() * 64
    parts = (*ctx.run_path, "checkpoints", train_run_name(step.name, step.cache_key), f"checkpoint_{ctx.attempt:06d}")
    ctx.storage.write_bytes(state, *parts, CHECKPOINT_STATE_FILE)
    ctx.storage.write_json(
        {"epoch": 1, "files": {CHECKPOINT_STATE_FILE: hashlib.sha256(state).hexdigest()}}, *parts, MANIFEST
    )
    return ctx.storage.uri(*parts)
