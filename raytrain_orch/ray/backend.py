"""The Ray backend: runs one step attempt on the cluster, and describes failures as data.

The runner calls this small interface (``cluster``, ``run_step``, ``drain_events``,
``describe_failure``, ``close``); tests can hand the runner a fake with the same methods.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from queue import Empty
from typing import Any, Callable, Mapping, Sequence

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from raytrain_orch.context import StepContext
from raytrain_orch.core import constants, sentences
from raytrain_orch.core.config import AdmissionConfig
from raytrain_orch.core.errors import StepPreempted
from raytrain_orch.core.events import Event, make
from raytrain_orch.core.placement import ClusterSpec
from raytrain_orch.core.plan import StepPlan
from raytrain_orch.core.text import gist
from raytrain_orch.ray import data, faults, gangs, leases, preemption, session, stacks, warm
from raytrain_orch.ray.channel import EventChannel
from raytrain_orch.ray.usage import UsageSampler
from raytrain_orch.store import logcapture
from raytrain_orch.store.artifacts import Artifact, Output, write_artifact
from raytrain_orch.store.steplogs import stacks_parts


def _run_task(fn: Callable, ctx: StepContext, params: Any, inputs: Mapping[str, Artifact]) -> dict[str, Any]:
    """Runs inside the step's gang: call the step and store its output (the driver logs it to
    MLflow, so a task that does not log anything itself never loads MLflow)."""
    output_dir = Path(tempfile.mkdtemp(prefix=f"rto-{ctx.step}-"))
    channel = ctx.events.deferring()  # its events need not wait, only come before its result
    ctx = replace(ctx, output_dir=output_dir, events=channel)
    sampler = UsageSampler(ctx.emit, rank=None).start()  # what the gang's process uses, for the run report
    try:
        stacks.arm(ctx)
        kwargs: dict[str, Any] = {"ctx": ctx, **inputs}
        if params is not None:
            kwargs["params"] = params
        with logcapture.capture(ctx):
            output = Output.coerce(fn(**kwargs), ctx.step)
            written = data.write_datasets(output, ctx.storage, ctx.artifact_path)
            return write_artifact(
                ctx.storage, ctx.artifact_path, ctx.step, output, files_dir=output_dir, written=written
            ).to_dict()
    finally:
        sampler.stop()
        channel.flush()
        shutil.rmtree(output_dir, ignore_errors=True)


@ray.remote(max_retries=0)
def _warm_worker(modules: list[str]) -> int:
    """Import ``modules`` (and what every task step runs on) in a worker the run's task steps reuse.
    MLflow, which a step needs only to log or register a model, goes on loading in the background
    once the worker is free (a step that imports it meanwhile waits for that import, not a second)."""
    importlib.import_module("raytrain_orch.store.artifacts")
    for name in modules:
        importlib.import_module(name)
    threading.Thread(target=importlib.import_module, args=("mlflow",), name="rto-preload", daemon=True).start()
    return os.getpid()


@dataclass
class _Live:
    """A running attempt, as far as hang handling needs it: its processes (by rank; None for a
    task step's one), and what ends it — its Ray task, or its Ray Train controller."""

    ctx: StepContext
    processes: dict[Any, dict[str, Any]] = field(default_factory=dict)
    task: ray.ObjectRef | None = None
    controller: Any = None


def _prestarter() -> warm.Prestarter | None:
    if not constants.PRESTART:
        return None
    try:
        return warm.Prestarter()
    except Exception:  # noqa: BLE001 — Ray's internals moved: steps start cold, as without it
        return None


class RayBackend:
    def __init__(
        self, admission: AdmissionConfig | None = None, preload: Sequence[str] = (), train_workers: Sequence[int] = ()
    ) -> None:
        """``preload``: modules the run's task steps import (the pipeline's); a worker imports
        them now, while the driver sets the run up, and the first task step runs in it.
        ``train_workers``: the worker count of each train step the run may start, in order; the
        processes of the first are prestarted now, those of each next one as the one before starts."""
        self._admission = admission or AdmissionConfig()
        # The progress channel from workers to this driver, and this driver's own notes.
        self._events = EventChannel.create()
        self._local: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._warming = _warm_worker.options(num_cpus=0, name="rto:warm-up").remote(list(preload)) if preload else None
        self._live: dict[tuple[str, int], _Live] = {}
        self._leases = leases.Leases()  # this driver's leases, released by ``close``
        self._train_workers = list(train_workers)
        self._prestarter = _prestarter()
        if self._prestarter is not None and self._train_workers:
            warming, deadline = self._warming, time.monotonic() + 60
            ready = (
                (lambda: bool(ray.wait([warming], timeout=0)[0]) or time.monotonic() > deadline) if warming else None
            )
            self._prestarter.train(self._train_workers.pop(0), ready=ready)
        self._task = ray.remote(_run_task)  # made once: Ray exports a new remote function's code again
        self._returning: dict[str, str] = {}  # preempted steps waiting to resume: what they say while they wait

    def _preemptible(self, step: StepPlan) -> bool:
        """Only a train step checkpoints where it can stop; a sweep's trials are Tune's to stop."""
        return step.kind == "train" and step.sweep is None and self._admission.preemptible

    def _terms(self, step: StepPlan) -> dict[str, Any]:
        """What the admission queue is told of the step's gang besides its bundles."""
        scaling = step.scaling
        return {
            "queue": self._admission.queue,
            "preemptible": self._preemptible(step),
            "min_runtime_s": self._admission.min_runtime_s,
            "min_bundles": scaling.min_workers if scaling is not None and scaling.elastic else 0,
        }

    def _warm(self) -> None:
        """Let the warm-up finish first: a task submitted meanwhile would start a cold worker of
        its own. (What it imports the step's worker would import anyway.)"""
        if self._warming is not None:
            warming, self._warming = self._warming, None
            with contextlib.suppress(Exception):  # a module that fails to import fails its step, with the error
                ray.get(warming, timeout=60)

    def cluster(self) -> ClusterSpec:
        return session.cluster_spec()

    def run_step(self, step: StepPlan, fn: Callable, ctx: StepContext, inputs: Mapping[str, Artifact]) -> Artifact:
        """Run one attempt of ``step`` to completion (blocking) and return its artifact.

        The attempt first waits for its whole gang in the cluster's admission queue; nothing
        of the cluster is held while it waits.
        """
        ctx = replace(ctx, events=self._events)
        if step.sweep is not None:
            from raytrain_orch.ray.sweep import run_sweep_step  # Ray Tune loads only when a sweep runs

            return run_sweep_step(step, fn, ctx, inputs, self._admission)  # no lease of its own: each trial takes one
        where = {"step": step.name, "attempt": ctx.attempt}
        key = (step.name, ctx.attempt)
        self._live[key] = _Live(ctx)
        try:
            return self._run_admitted(step, fn, ctx, inputs, where)
        finally:
            self._live.pop(key, None)

    def _run_admitted(
        self, step: StepPlan, fn: Callable, ctx: StepContext, inputs: Mapping[str, Artifact], where: dict[str, Any]
    ) -> Artifact:
        label = f"{ctx.run_id}/{step.name}"
        ticket = f"{label}/{uuid.uuid4().hex[:8]}"
        stop = preemption.Stop(self._events, step.name, ctx.attempt, self._local) if self._preemptible(step) else None
        returning = self._returning.pop(step.name, None)  # a preempted attempt's sentence, while it waits

        def waiting(reason: str, position: int) -> None:
            reason = f"{returning}; {reason}" if returning else reason
            self._local.put(make(Event.STEP_WAITING, **where, reason=reason, position=position, ts=time.time()))

        with self._leases.admitted(
            step.gang,
            label,
            priority=self._admission.priority,
            timeout_s=self._admission.timeout_s,
            on_wait=waiting,
            ticket=ticket,
            terms=self._terms(step),
            on_preempted=stop.request if stop is not None else None,
        ) as granted:
            displaced = {"displaced": granted["displaced"]} if granted["displaced"] else {}
            waited_s = round(granted["waited_s"], 3)
            self._local.put(make(Event.STEP_ADMITTED, **where, waited_s=waited_s, **displaced, ts=time.time()))
            if step.kind == "train":
                from raytrain_orch.ray.train import (
                    run_train_step,
                )  # torch and Ray Train load only when a train step runs

                self._prestart_after_train()
                if stop is not None:
                    stop.abort = lambda: self.end_attempt(step.name, ctx.attempt)
                try:
                    return run_train_step(
                        step, fn, ctx, inputs, lease=ticket, preempted=stop.outcome if stop is not None else None
                    )
                except StepPreempted as preempted:
                    self._returning[step.name] = sentences.step_preempted(
                        {**preempted.preempted, "epoch": preempted.epoch}
                    )
                    raise
            self._warm()
            options = {
                "name": f"rto:{step.name}",
                "max_retries": 0,
                **gangs.bundle_options(step.gang.bundles[0]),
            }  # retries: the runner's call
            if len(step.gang.bundles) == 1:
                # A one-bundle gang is the task's own resource request, all or nothing by itself.
                # A placement group would add its creation and, worse, the wait for Ray to return
                # a removed group's resources (~0.15 s for a whole CPU) to every step.
                done = self._task.options(**options).remote(fn, ctx, step.params, dict(inputs))
                self._live[(step.name, ctx.attempt)].task = done
                stored: dict[str, Any] = ray.get(done)
                artifact = Artifact.from_dict(stored)
            else:
                with gangs.reserved(step.gang, name=f"rto/{ctx.run_id}/{step.name}/{ctx.attempt}") as group:
                    # The step runs in bundle 0; its own Ray tasks run in the gang's other bundles.
                    strategy = PlacementGroupSchedulingStrategy(
                        group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
                    )
                    task = self._task.options(scheduling_strategy=strategy, **options)
                    done = task.remote(fn, ctx, step.params, dict(inputs))
                    self._live[(step.name, ctx.attempt)].task = done
                    stored = ray.get(done)
                    artifact = Artifact.from_dict(stored)
        return artifact

    def _prestart_after_train(self) -> None:
        """As a train step starts: warm processes for the next train step, and a task worker kept
        alive for the task steps after it, however long it trains."""
        if self._prestarter is None:
            return
        self._prestarter.tasks()
        if self._train_workers:
            self._prestarter.train(self._train_workers.pop(0))

    def drain_events(self) -> list[dict[str, Any]]:
        """This driver's own notes, then what the workers sent: one round trip to the channel."""
        events = []
        while True:
            try:
                events.append(self._local.get_nowait())
            except Empty:
                break
        try:
            sent = self._events.take()
        except ray.exceptions.ActorUnavailableError:
            sent = []  # the channel's process is restarting (events sent meanwhile are lost): read it next time
        except ray.exceptions.RayActorError as e:
            # Gone for good (killed by hand): a new channel for the attempts started from now on;
            # running attempts' progress is lost until their next attempt, their results are not.
            self._events = EventChannel.create()
            sent = [make(Event.PROGRESS_CHANNEL_LOST, error=gist(e), ts=time.time())]
        for record in sent:
            if record.get("event") == Event.STEP_PROCESS:
                self._located(record)  # the runner learns only that the step's code runs
                record = {k: record[k] for k in ("event", "step", "attempt", "ts") if k in record}
            events.append(record)
        return events

    def _located(self, record: dict[str, Any]) -> None:
        """A step's process said where it runs (``stacks.arm``), or its Ray Train controller
        handed over its handle."""
        live = self._live.get((record.get("step", ""), record.get("attempt", 0)))
        if live is None:
            return
        if record.get("controller") is not None:
            live.controller = record["controller"]
        else:
            live.processes[record.get("rank")] = record  # a restarted group's rank replaces the old

    def keep_stacks(self, step: str, attempt: int) -> int:
        live = self._live.get((step, attempt))
        if live is None:
            return 0
        taken = stacks.capture(list(live.processes.values()))
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        header = f"{step} attempt {attempt}: the Python stacks of its processes at {when}, when it was found hung\n"
        live.ctx.storage.write_bytes(
            stacks.render(taken, header).encode(), *stacks_parts(live.ctx.run_path, step, attempt)
        )
        return len(taken)

    def end_attempt(self, step: str, attempt: int) -> None:
        live = self._live.get((step, attempt))
        if live is None:
            return
        if live.controller is not None:  # Ray Train ends its worker group, and fit() raises
            with contextlib.suppress(ray.exceptions.RayActorError):  # it exits as it aborts
                ray.get(live.controller.abort.remote(), timeout=60)
        elif live.task is not None:
            ray.cancel(live.task, force=True)

    def helper_nodes(self) -> dict[str, str]:
        """The node id of each actor this driver depends on (for ``rto status`` and tests): where
        it is pinned, so that the run's start never waits for an actor's process to start."""
        return {"events": self._events.node_id, "admission": session.head_node_id()}

    def close(self) -> None:
        if self._prestarter is not None:
            self._prestarter.close()
        self._leases.close()  # leases of attempts an interrupt left behind
        with contextlib.suppress(Exception):  # already gone with its node
            self._events.shutdown()

    describe_failure = staticmethod(faults.describe)
