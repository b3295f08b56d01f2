"""Gangs on Ray: the cluster-wide admission queue, placement groups, and the live cluster.

Every step attempt runs under a lease of the admission queue (``admitted``), which grants its
whole gang or makes it wait; nothing of the cluster is held while waiting. Under the lease:

- a task step reserves its gang as one placement group (``reserved``), all or nothing, runs
  its Ray task in it, and removes the group when the step ends however it ends;
- a train step lets ``TorchTrainer`` place its workers' own placement group. The lease covers
  exactly that group: the workers' bundles and strategy are the gang, and Ray Train's
  controller actor asks for no resources (``num_cpus=0``). Worker-group restarts after a
  failure happen inside the same lease, so a recovering step never re-queues.

The queue is one named, detached actor per cluster (``Admission``), so every driver on a
cluster — ``rto run --address``, submitted jobs, sweep trials — shares it. Its logic is the pure
``admission.AdmissionQueue``; this module only hosts it and talks to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from typing import Callable, Iterator

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raytrain_orch.ray import auth
from raytrain_orch.core import constants
from raytrain_orch.core.admission import AdmissionQueue
from raytrain_orch.core.config import RayConfig
from raytrain_orch.core.errors import AdmissionTimeoutError, CapacityLostError, ClusterAccessError, ConfigError, SchedulingTimeoutError
from raytrain_orch.core.plan import ClusterSpec, GangSpec, NodeType

log = logging.getLogger(__name__)

#: Environment given to every Ray worker of a run, unless the environment already sets it.
WORKER_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(constants.TRAIN_HEALTH_CHECK_INTERVAL_S),
    # Keep worker output as the user's loop printed it.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}


def connect(cfg: RayConfig, address: str | None = None) -> bool:
    """Start a local Ray or join a cluster; return True when this call started the session."""
    if ray.is_initialized():
        return False
    address = address or cfg.address
    if address is None and "RAY_ADDRESS" not in os.environ:
        # No address means a fresh local Ray; plain ray.init() would instead join whatever cluster
        # /tmp/ray/ray_current_cluster last named, even a dead one. Inside `ray job submit`,
        # RAY_ADDRESS names the job's own cluster and ray.init() joins it.
        address = "local"
    env = {k: v for k, v in WORKER_ENV.items() if k not in os.environ}
    kwargs: dict = {"address": address, "runtime_env": {"env_vars": env}, "logging_level": logging.WARNING}
    if address == "local":
        # The dashboard stays on although its processes slow a small machine's start (~1.5 s):
        # Ray Train's PlacementGroupCleaner asks the state API, which the dashboard serves,
        # whether a controller died, and without it never frees a stopped sweep trial's group.
        kwargs.update(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, resources=cfg.resources)
    elif cfg.num_cpus is not None or cfg.num_gpus is not None or cfg.resources is not None:
        raise ConfigError("ray.num_cpus / ray.num_gpus / ray.resources apply to a local Ray only; remove them when joining a cluster")
    else:
        auth.authenticate(address or os.environ["RAY_ADDRESS"])  # a token-auth head: find the token, or say what is wrong
    try:
        ray.init(**kwargs)
    except ray.exceptions.AuthenticationError as e:
        raise ClusterAccessError(f"the Ray cluster at {address or os.environ.get('RAY_ADDRESS')} requires a token: {_first_sentence(e)}; {auth.TOKEN_FIX}") from None
    except ConnectionError as e:
        raise ConfigError(f"cannot reach the Ray cluster at {address!r} ({e}); start it with `ray start --head` or fix --address") from None
    return True


def disconnect() -> None:
    """Leave the session ``connect`` started (a local Ray stops with it)."""
    ray.shutdown()


def _first_sentence(error: BaseException) -> str:
    return str(error).split(". ", 1)[0].rstrip(".")


def local_session_processes() -> list[tuple[int, float]]:
    """(pid, start time) of the local Ray session this driver started, agents included.

    A driver killed with SIGKILL takes its gcs_server and raylet with it, but the raylet's
    DashboardAgent and RuntimeEnvAgent outlive it and ignore SIGTERM; recording them lets the
    next ``rto`` command that sees the driver dead remove them (``reap``).
    """
    import psutil

    node = ray._private.worker._global_node  # the session this process started, if any
    if node is None:
        return []
    roots = [info.process.pid for infos in node.all_processes.values() for info in infos if info.process is not None]
    found: dict[int, float] = {}
    for pid in roots:
        try:
            process = psutil.Process(pid)
            for p in [process, *process.children(recursive=True)]:
                found[p.pid] = p.create_time()
        except psutil.NoSuchProcess:
            continue
    return sorted(found.items())


def reap(processes: list[tuple[int, float]] | list[list[float]]) -> int:
    """SIGKILL the recorded processes that still exist (same pid and start time); return how many."""
    import psutil

    killed = 0
    for pid, started in processes:
        try:
            process = psutil.Process(int(pid))
            if abs(process.create_time() - started) < 1e-3:
                process.kill()
                killed += 1
        except psutil.NoSuchProcess:
            continue
    return killed


def is_local(cfg: RayConfig, address: str | None = None) -> bool:
    """Whether ``connect`` would start a fresh local Ray (rather than join a cluster or reuse
    this process's session)."""
    return not ray.is_initialized() and (address or cfg.address) in (None, "local") and "RAY_ADDRESS" not in os.environ


def local_cluster_spec(cfg: RayConfig) -> ClusterSpec:
    """The one node a local Ray would offer, known without starting it: CPUs and GPUs as Ray
    detects them (or as configured) and the configured custom resources."""
    import psutil
    from ray._private.accelerators import get_accelerator_manager_for_resource
    from ray._private.utils import get_num_cpus

    gpus = cfg.num_gpus
    if gpus is None:
        gpus = get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()
    node = {"CPU": float(cfg.num_cpus or get_num_cpus()), **({"GPU": float(gpus)} if gpus else {})}
    node.update({k: float(v) for k, v in (cfg.resources or {}).items()})
    # Ray sizes these from the memory free when it starts; the machine's total bounds them, and
    # the check against the live cluster once Ray is up has the exact numbers.
    total = float(psutil.virtual_memory().total)
    node.update(memory=total, object_store_memory=total)
    return ClusterSpec(nodes=(node,))


def cluster_spec() -> ClusterSpec:
    """Each alive node's total resources, and the node types the autoscaler may still add."""
    nodes = tuple(dict(node["Resources"]) for node in ray.nodes() if node.get("Alive"))
    return ClusterSpec(nodes=nodes, node_types=_autoscaler_node_types(nodes))


def _autoscaler_node_types(nodes: tuple[dict, ...]) -> tuple[NodeType, ...]:
    """What the cluster's autoscaler reports it can launch (its cluster config in the GCS, the
    same record Ray Train reads), less the nodes of each type already up. None without one."""
    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # noqa: BLE001 — an older or unusual GCS: judge by the nodes that are up
        log.debug("no autoscaler cluster config", exc_info=True)
        return ()
    if config is None:
        return ()
    types = []
    for group in config.node_group_configs:
        resources = {k: float(v) for k, v in group.resources.items()}
        if not resources or group.max_count == 0:
            continue
        running = sum(1 for n in nodes if all(abs(n.get(k, 0.0) - v) < 1e-9 for k, v in resources.items()))
        types.append(NodeType(resources, -1 if group.max_count < 0 else max(0, group.max_count - running)))
    return tuple(types)


def bundle_options(bundle: dict[str, float]) -> dict:
    """``.options()`` keyword arguments asking for exactly one bundle's resources."""
    custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU", "memory")}
    options = {"num_cpus": bundle.get("CPU", 0), "num_gpus": bundle.get("GPU", 0), "resources": custom}
    if "memory" in bundle:
        options["memory"] = bundle["memory"]
    return options


@contextlib.contextmanager
def reserved(gang: GangSpec, name: str, timeout_s: float = constants.GANG_TIMEOUT_S) -> Iterator[PlacementGroup]:
    """Reserve ``gang`` as one placement group; always remove it on exit."""
    group = placement_group([dict(b) for b in gang.bundles], strategy=gang.strategy, name=name)
    try:
        if not group.wait(timeout_seconds=timeout_s):
            raise SchedulingTimeoutError(
                f"{name}: gang {gang.describe()} was admitted but Ray did not place it within {timeout_s:g} s; "
                "work outside raytrain_orch holds the cluster — free it, or raise RTO_GANG_TIMEOUT_S"
            )
        yield group
    finally:
        remove_placement_group(group)


# --- the admission queue ------------------------------------------------------------------------

ADMISSION_ACTOR = "rto-admission-v2"  # bump the suffix when the actor's methods change
ADMISSION_NAMESPACE = "raytrain_orch"
_CLUSTER_REFRESH_S = 1.0


@ray.remote(num_cpus=0)
class Admission:
    """The cluster's admission queue, hosted in an async actor so callers can long-poll."""

    def __init__(self) -> None:
        self._queue = AdmissionQueue()
        self._events: dict[str, asyncio.Event] = {}
        self._cluster, self._cluster_at = ClusterSpec(), 0.0
        self._ticker: asyncio.Task | None = None

    async def wait(self, ticket: str, bundles: list[dict], strategy: str, label: str, priority: int, ttl_s: float, timeout_s: float) -> dict:
        """Enqueue (or keep alive) ``ticket`` and wait up to ``timeout_s`` for a verdict."""
        self._start_ticker()
        self._queue.submit(ticket, GangSpec(tuple(bundles), strategy), label=label, priority=priority, ttl_s=ttl_s, now=time.time())
        self._reschedule()
        if self._verdict(ticket)["state"] == "waiting":
            event = self._events.setdefault(ticket, asyncio.Event())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), timeout_s)
        return self._verdict(ticket)

    async def touch(self, tickets: list[str]) -> list[str]:
        return self._queue.touch(tickets, time.time())

    async def reclaim(self, ticket: str, bundles: list[dict], strategy: str, label: str, priority: int, ttl_s: float) -> None:
        self._queue.reclaim(ticket, GangSpec(tuple(bundles), strategy), label=label, priority=priority, ttl_s=ttl_s, now=time.time())
        self._reschedule()

    async def release(self, ticket: str) -> bool:
        released = self._queue.release(ticket)
        self._events.pop(ticket, None)
        self._reschedule()
        return released

    async def release_run(self, run_id: str) -> int:
        for request in (gone := self._queue.release_run(run_id)):
            self._events.pop(request.ticket, None)
        self._reschedule()
        return len(gone)

    async def snapshot(self) -> dict:
        return {**self._queue.snapshot(self._cluster_spec(), time.time()), "cluster": [dict(n) for n in self._cluster_spec().nodes]}

    def _verdict(self, ticket: str) -> dict:
        verdict = self._queue.verdict(ticket, self._cluster)
        return {"state": verdict.state, "position": verdict.position, "reason": verdict.reason, "lacking": verdict.lacking}

    def _reschedule(self) -> None:
        now = time.time()
        for gone in self._queue.expire(now):
            log.warning("admission: dropped %s (%s): its driver stopped renewing it", gone.label, gone.gang.describe())
            self._events.pop(gone.ticket, None)
        waiting = {r.ticket for r in self._queue.waiting()}
        self._queue.schedule(self._cluster_spec(), now)
        for ticket in waiting - {r.ticket for r in self._queue.waiting()}:  # granted
            if ticket in self._events:
                self._events.pop(ticket).set()

    def _cluster_spec(self) -> ClusterSpec:
        if time.time() - self._cluster_at > _CLUSTER_REFRESH_S:
            self._cluster, self._cluster_at = cluster_spec(), time.time()
        return self._cluster

    def _start_ticker(self) -> None:
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        """Expire dead holders and notice grown clusters even when nobody calls."""
        while True:
            await asyncio.sleep(_CLUSTER_REFRESH_S)
            self._reschedule()


def admission() -> ray.actor.ActorHandle:
    """The cluster's admission actor, created by whichever driver or worker asks first.

    On the head node, which lives as long as the cluster: a queue on a worker node would die with
    that node and restart empty, forgetting every lease. Never inside the caller's placement
    group either (node affinity is a strategy of its own): a caller running in a gang that
    captures its children (a task step, a sweep trial) would otherwise place the queue in that
    gang, and the queue would die with it when the gang is removed. Should its process die, Ray
    restarts it on the head and the holders' renewals tell it their leases again (``_renew``).
    """
    return Admission.options(
        name=ADMISSION_ACTOR,
        namespace=ADMISSION_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(head_node_id(), soft=False),
    ).remote()


def head_node_id() -> str:
    """The id of the cluster's head node (the one Ray marks with ``node:__internal_head__``)."""
    global _HEAD
    if _HEAD is None or _HEAD[0] != ray.get_runtime_context().get_job_id():
        head = next((n["NodeID"] for n in ray.nodes() if n.get("Alive") and HEAD_RESOURCE in n.get("Resources", {})), None)
        if head is None:
            raise SchedulingTimeoutError("the Ray cluster reports no head node alive; is it shutting down?")
        _HEAD = (ray.get_runtime_context().get_job_id(), head)
    return _HEAD[1]


def driver_node_id() -> str:
    return ray.get_runtime_context().get_node_id()


HEAD_RESOURCE = "node:__internal_head__"
_HEAD: tuple[str, str] | None = None  # (this session's job id, its head node id)


#: Tickets this process holds or waits for, released by ``release_all`` when the driver stops.
_HELD: dict[str, ray.actor.ActorHandle] = {}
_HELD_LOCK = threading.Lock()


@contextlib.contextmanager
def admitted(
    gang: GangSpec,
    label: str,
    *,
    priority: int = 0,
    timeout_s: float | None = None,
    on_wait: Callable[[str, int], None] | None = None,
    ttl_s: float | None = None,
    ticket: str | None = None,
) -> Iterator[float]:
    """Hold a lease on ``gang`` from the cluster's admission queue; yield the seconds waited.

    Waits in the queue (reporting each change of position through ``on_wait``) until the whole
    gang fits, and raises ``AdmissionTimeoutError`` after ``timeout_s``. A gang the cluster can
    no longer hold at all (it lost nodes) waits for them to join at most ``timeout_s`` or, when
    that is None, ``RTO_CAPACITY_WAIT_S``. The lease is renewed while held and released on exit,
    however the block ends. A caller-chosen ``ticket`` lets another process ``release`` the
    lease (a process that is killed cannot).
    """
    handle = admission()
    ticket = ticket or f"{label}/{uuid.uuid4().hex[:8]}"
    bundles, started, last = [dict(b) for b in gang.bundles], time.monotonic(), None
    ttl = ttl_s or constants.LEASE_TTL_S
    limit = timeout_s if timeout_s is not None else constants.CAPACITY_WAIT_S
    lacking_since: float | None = None
    with _HELD_LOCK:
        _HELD[ticket] = handle
    stop = threading.Event()
    try:
        while True:
            # The first call answers at once, so a waiting step says so without delay.
            poll = 0.0 if last is None else constants.ADMISSION_POLL_S
            if timeout_s is not None:
                poll = max(0.0, min(poll, timeout_s - (time.monotonic() - started)))
            verdict = ray.get(handle.wait.remote(ticket, bundles, gang.strategy, label, priority, ttl, poll))
            if verdict["state"] == "granted":
                break
            now = time.monotonic()
            lacking_since = (lacking_since or now) if verdict.get("lacking") else None
            timed_out = timeout_s is not None and now - started >= timeout_s
            if lacking_since is not None and (timed_out or now - lacking_since >= limit):  # the more telling of the two
                raise CapacityLostError(
                    f"{verdict['reason'].removeprefix('waiting for nodes: ')}; no node joined within {limit:g} s "
                    f"({'admission.timeout_s' if timeout_s is not None else 'RTO_CAPACITY_WAIT_S'}) — "
                    f"add nodes that can hold it, then `rto resume {label.split('/')[0]}`"
                )
            if timed_out:
                raise AdmissionTimeoutError(
                    f"{label}: waited {timeout_s:g} s for {gang.describe()} (admission.timeout_s) — {verdict['reason']}; "
                    "raise admission.timeout_s, or run when the cluster is free"
                )
            if (verdict["position"], verdict["reason"]) != last:
                last = (verdict["position"], verdict["reason"])
                if on_wait is not None:
                    on_wait(verdict["reason"], verdict["position"])
        lease = (ticket, bundles, gang.strategy, label, priority, ttl)
        threading.Thread(target=_renew, args=(handle, lease, stop), name=f"rto-lease-{label}", daemon=True).start()
        yield time.monotonic() - started
    finally:
        stop.set()
        with _HELD_LOCK:
            _HELD.pop(ticket, None)
        try:
            ray.get(handle.release.remote(ticket), timeout=10)
        except ray.exceptions.RayActorError:
            release(ticket)  # the queue was replaced meanwhile: release it there
        except Exception:  # noqa: BLE001 — the cluster may be gone; the lease then expires
            pass


def _renew(handle: ray.actor.ActorHandle, lease: tuple, stop: threading.Event) -> None:
    """Keep a granted lease alive; book it again if the queue restarted (or was replaced) and
    forgot it."""
    ticket, ttl_s = lease[0], lease[-1]
    while not stop.wait(ttl_s / 6):
        try:
            if ray.get(handle.touch.remote([ticket]), timeout=ttl_s / 2) and not stop.is_set():
                handle.reclaim.remote(*lease)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.ActorUnavailableError):
            continue  # busy or restarting: the next renewal finds it back, empty, and books the lease again
        except ray.exceptions.RayActorError:
            with contextlib.suppress(Exception):  # gone for good (killed by hand): the queue made anew
                handle = admission()
                with _HELD_LOCK:
                    if ticket in _HELD:
                        _HELD[ticket] = handle
        except Exception:  # noqa: BLE001 — Ray is shutting down
            return


def release(ticket: str) -> None:
    """Release the lease or queue place ``ticket`` holds, wherever it was taken."""
    with contextlib.suppress(Exception):  # no queue, or the cluster is going away: TTLs expire it
        ray.get(admission().release.remote(ticket), timeout=10)


def release_run(run_id: str) -> int:
    """Release the leases a dead driver of ``run_id`` left in the queue; return how many."""
    try:
        handle = ray.get_actor(ADMISSION_ACTOR, namespace=ADMISSION_NAMESPACE)
    except ValueError:
        return 0  # nothing on this cluster has used the queue yet
    return ray.get(handle.release_run.remote(run_id), timeout=10)


def release_all() -> None:
    """Release every lease and queue place of this process (a driver stopping early)."""
    with _HELD_LOCK:
        held = list(_HELD.items())
        _HELD.clear()
    refs = []
    for ticket, handle in held:
        with contextlib.suppress(Exception):
            refs.append(handle.release.remote(ticket))
    with contextlib.suppress(Exception):
        ray.wait(refs, num_returns=len(refs), timeout=5)


def admission_snapshot() -> dict | None:
    """The queue as plain data (holders, waiters, each node's free resources in its books), or
    None when nothing on this cluster has used it yet."""
    try:
        handle = ray.get_actor(ADMISSION_ACTOR, namespace=ADMISSION_NAMESPACE)
    except ValueError:
        return None
    return ray.get(handle.snapshot.remote())
