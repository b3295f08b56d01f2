"""What runs inside Ray Train's controller for a train step (``WorkerGroupWatch``, given to the
trainer as a ``RunConfig`` callback): it tells the driver of worker-group restarts, drains and
sizes, books an elastic step's size in the admission queue, and, for an elastic group restarting
after a node loss or a drain, asks for what the nodes that are still there can hold.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Mapping

import ray

from raytrain_orch.context import StepContext
from raytrain_orch.core.events import Event
from raytrain_orch.core.placement import GangSpec
from raytrain_orch.core.text import gist
from raytrain_orch.ray import admission, leases

try:  # Ray Train's controller hooks: internal, so a Ray without them runs without this view
    from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback
except ImportError:  # pragma: no cover — another Ray layout
    ControllerCallback = object  # type: ignore[misc,assignment]  # the class below then hooks nothing
    WorkerGroupCallback = object  # type: ignore[misc,assignment]


class WorkerGroupWatch(ControllerCallback, WorkerGroupCallback):
    """Runs inside Ray Train's controller: tells the driver when the worker group restarts
    (a worker or its node was lost) and why, when a node of its workers is drained (a
    preemption: Ray Train restarts the group off that node without spending ``max_failures``),
    and the size each worker group starts with — an elastic step's lease in the admission queue
    follows that size. It hands the driver the controller's handle, which ends the attempt when
    it hangs.

    It also keeps tracebacks off the console the controller's logs reach (Ray forwards them to
    the driver's): its log files keep them. A worker group that could not start in time
    (capacity that is gone) is not shown at all: the attempt then ends as an infrastructure
    fault, which the driver reports in one line.
    """

    def __init__(self, ctx: StepContext, scaling: Any = None, lease: str | None = None):
        self._ctx, self._scaling, self._lease = ctx, scaling, lease
        self._size: int | None = None
        self._nodes: dict[int, str] = {}  # each rank's node, in the group now
        self._suspects: set[str] = set()  # the nodes of a group that failed: one of them may be gone
        self._draining: set[str] = set()  # nodes drained under the group (a preemption)
        self._gone: set[str] = set()  # lost or drained nodes the cluster may still count as alive

    def after_controller_start(self, train_run_context: Any) -> None:
        for handler in logging.getLogger("ray.train").handlers:
            if type(handler).__name__ == "PlainRayHandler":  # the console; its file handlers come first
                handler.addFilter(_one_line_on_console)
        self._ctx.emit(Event.STEP_PROCESS, controller=ray.get_runtime_context().current_actor)

    def after_controller_state_update(self, previous_state: Any, current_state: Any) -> None:
        state = getattr(getattr(current_state, "_state_type", None), "name", "")
        error = getattr(current_state, "training_failed_error", None)
        if state in ("RESTARTING", "RESCHEDULING") and error is not None:
            self._ctx.emit(Event.WORKERS_RESTARTING, phase=state, reason=_worker_error(error))
            # A lost node shows as its worker's death, or first as a survivor's broken collective:
            # any of the group's nodes may be the one gone.
            self._suspects.update(self._nodes.values())
        elif state == "RESIZING":  # an elastic group grows into capacity that appeared
            decision = getattr(current_state, "scaling_decision", None)
            size = getattr(decision, "num_workers", "more")
            self._ctx.emit(Event.WORKERS_RESTARTING, phase=state, reason=f"capacity for {size} workers appeared")
        info = getattr(current_state, "preemption_info", None)
        if state != "PREEMPTING" or info is None:
            return
        self._draining.update(info.preempted_node_ids)  # they take no new workers
        if getattr(previous_state, "preemption_info", None) is None:
            self._ctx.emit(
                Event.NODE_DRAINING,
                nodes=list(info.preempted_node_ids),
                ranks=list(info.preempted_ranks),
                deadline_ms=info.deadline_ms,
            )

    def before_controller_execute_resize_decision(self, decision: Any) -> None:
        """An elastic group restarting after its workers died with their node, or after a drain:
        Ray Train still counts that node until the cluster declares it dead (about half a minute),
        asks for the old size, and waits out a start timeout for it. Ask for what the nodes that
        answer and are not drained can hold."""
        if self._scaling is None or not self._scaling.elastic:
            return
        if self._suspects:
            self._gone |= self._suspects - _answering(self._suspects)
            self._suspects.clear()
        self._gone |= self._draining
        if self._gone:
            fits, alive = _workers_fitting(self._scaling.worker_bundle(), self._gone, self._scaling.max_workers)
            self._gone &= alive  # once the cluster has declared a node dead, its count is right by itself
            if self._scaling.min_workers <= fits < decision.num_workers:
                decision.num_workers = fits
        if self._lease is not None:
            # Grow only into what the admission queue's books hold: resources Ray shows free may
            # be granted to a gang whose workers are not placed yet (one that preempted this step).
            bundle, strategy = self._scaling.worker_bundle(), self._scaling.placement_strategy
            allowed = admission.grow(self._lease, bundle, strategy, decision.num_workers)
            decision.num_workers = max(self._scaling.min_workers, min(decision.num_workers, allowed))

    def after_worker_group_start(self, worker_group: Any) -> None:
        workers = worker_group.get_workers()
        self._nodes = {w.distributed_context.world_rank: w.metadata.node_id for w in workers}
        size = len(workers)
        if size == self._size or self._scaling is None:
            return
        previous, self._size = self._size, size
        self._ctx.emit(
            Event.WORKERS_RESIZED,
            world_size=size,
            previous=previous,
            min_workers=self._scaling.min_workers,
            max_workers=self._scaling.max_workers,
        )
        if self._lease is not None and self._scaling.elastic:
            bundle = self._scaling.worker_bundle()
            leases.resize(self._lease, GangSpec(tuple(bundle for _ in range(size)), self._scaling.placement_strategy))


@ray.remote(num_cpus=0, max_retries=0)
def _here() -> bool:
    return True


def _answering(nodes: set[str], timeout_s: float = 5.0) -> set[str]:
    """The ``nodes`` whose raylet still runs a task within ``timeout_s`` (a lost node's does not,
    before the cluster has declared it dead; a drained node's takes none)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    refs = {
        _here.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(): node
        for node in nodes
    }
    done, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    for ref in pending:
        ray.cancel(ref, force=True)
    answered = set()
    for ref in done:
        try:
            ray.get(ref)
            answered.add(refs[ref])
        except Exception:  # noqa: BLE001 — the node went away under it
            pass
    return answered


def _workers_fitting(bundle: Mapping[str, float], gone: set[str], most: int) -> tuple[int, set[str]]:
    """How many workers of ``bundle`` the live nodes other than ``gone`` hold (at most ``most``),
    and the nodes the cluster counts as alive."""
    total, alive = 0, set()
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        alive.add(node["NodeID"])
        if node["NodeID"] in gone:
            continue
        have = node.get("Resources", {})
        total += min(int(have.get(key, 0.0) // need) for key, need in bundle.items() if need > 0)
    return min(total, most), alive


def _one_line_on_console(record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    if type(error).__name__ == "WorkerGroupStartupTimeoutError":
        return False
    record.exc_info, record.exc_text = None, None
    return True


def _worker_error(error: BaseException) -> str:
    """The matcher for a Ray Train worker-group failure, whose type says only that a worker failed:
    the first error a worker's traceback ends with (``RuntimeError: … Connection closed by
    peer``), else its first line that says something."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.strip().endswith(":")]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line) and not line.startswith("ray.")]
    return gist(raised[0] if raised else lines[0] if lines else error)
