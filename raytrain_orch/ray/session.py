"""The Ray session and the cluster as this driver sees it: joining a cluster (with its token) or
starting a local Ray, the resources of its nodes and of the nodes its autoscaler may add, the
head and this driver's node, and the processes a local session leaves when its driver is killed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import ray

from raytrain_orch.core import constants
from raytrain_orch.core.config import RayConfig
from raytrain_orch.core.errors import ClusterAccessError, ConfigError, SchedulingTimeoutError
from raytrain_orch.core.events import Event, make
from raytrain_orch.core.placement import ClusterSpec, NodeType
from raytrain_orch.core.text import duration, gist
from raytrain_orch.ray import auth, runtime, warm

log = logging.getLogger(__name__)

#: Environment given to every Ray worker of a run, unless the environment already sets it.
WORKER_ENV = MappingProxyType(
    {
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(constants.TRAIN_HEALTH_CHECK_INTERVAL_S),
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(constants.TRAIN_START_TIMEOUT_S),
        # Keep worker output as the user's loop printed it.
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
        # Ray Data's progress bars, drawn by every worker that runs a dataset, would garble the driver's
        # console (Ray forwards worker output there); the run's progress view says what a step does.
        "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    }
)


@dataclass(frozen=True)
class Connection:
    """How ``connect`` reached Ray: ``joined`` a cluster, a ``throwaway`` local Ray, or the shared
    local runtime ``started``/``reused``/``restarted``; ``initialized`` when this call ran
    ``ray.init`` (so ``disconnect`` is due)."""

    initialized: bool
    kind: str
    address: str = ""
    note: str = ""

    def event(self) -> dict[str, Any]:
        return make(Event.RAY_RUNTIME, action=self.kind, address=self.address, note=self.note)


def connect(
    cfg: RayConfig, address: str | None = None, env: Mapping[str, str] | None = None, preload: Sequence[str] = ()
) -> Connection:
    """Join a cluster, the shared local runtime, or a throwaway local Ray (see ``Connection``);
    every worker of the run gets ``env`` (the storage's endpoint) and imports the ``preload``
    modules in the background as it starts (``ray/warm.py``)."""
    if ray.is_initialized():
        return Connection(False, "joined")
    address = address or cfg.address
    env = {**{k: v for k, v in WORKER_ENV.items() if k not in os.environ}, **(env or {})}
    # Workers' output and Ray's own logs stay in the steps' logs and Ray's log files, not the console.
    kwargs: dict = {
        "logging_level": logging.INFO if constants.VERBOSE else logging.ERROR,
        "log_to_driver": constants.VERBOSE,
    }
    runtime_env: dict[str, Any] = {} if _job_has_setup_hook() else {"worker_process_setup_hook": warm.SETUP_HOOK}
    env = {**env, **warm.preload_env(preload)}
    connection = Connection(True, "joined", address or os.environ.get("RAY_ADDRESS", ""))
    if address in (None, "local") and "RAY_ADDRESS" not in os.environ:
        # No address means a local Ray; plain ray.init() would instead join whatever cluster
        # /tmp/ray/ray_current_cluster last named, even a dead one. Inside `ray job submit`,
        # RAY_ADDRESS names the job's own cluster and ray.init() joins it.
        connection, shared = _local(cfg, address)
        if shared is None:
            address = "local"
            # The dashboard stays on although its processes slow a small machine's start (~1.5 s):
            # Ray Train's PlacementGroupCleaner asks the state API, which the dashboard serves,
            # whether a controller died, and without it never frees a stopped sweep trial's group.
            kwargs.update(
                num_cpus=cfg.num_cpus,
                num_gpus=cfg.num_gpus,
                resources=cfg.resources,
                _system_config=dict(runtime.SYSTEM_CONFIG),  # Ray encodes it as JSON
            )
        else:  # the shared runtime: the workers get the driver's environment and directory as they are now
            address = shared.address
            env = {**runtime.env_update(shared.env, os.environ), **env, warm.DRIVER_CWD: os.getcwd()}
    elif cfg.num_cpus is not None or cfg.num_gpus is not None or cfg.resources is not None:
        raise ConfigError(
            "ray.num_cpus / ray.num_gpus / ray.resources apply to a local Ray only; remove them when joining a cluster"
        )
    else:
        auth.authenticate(
            address or os.environ["RAY_ADDRESS"]
        )  # a token-auth head: find the token, or say what is wrong
    if address is not None and auth.gcs_address(address):
        # The run's workers ask Ray's state API about their own cluster, not whichever of this
        # machine's Ray instances "auto" would find: Ray Train's PlacementGroupCleaner looks up its
        # controller so, and with two instances (the shared runtime and a cluster started by hand)
        # it finds both and fails, leaving a dead controller's placement group behind.
        env.setdefault("RAY_ADDRESS", address)
    try:
        ray.init(address=address, runtime_env={**runtime_env, "env_vars": env}, **kwargs)
    except ray.exceptions.AuthenticationError as e:
        where = address or os.environ.get("RAY_ADDRESS")
        raise ClusterAccessError(
            f"the Ray cluster at {where} requires a token: {gist(e, sentence=True)}; {auth.TOKEN_FIX}"
        ) from None
    except ConnectionError as e:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address!r} ({e}); start it with `ray start --head` or fix --address"
        ) from None
    return connection


def _job_has_setup_hook() -> bool:
    """Whether the Ray job this driver runs as (``ray job submit --runtime-env-json``) brings a
    setup hook of its own: Ray refuses two, and the user's wins (its workers preload nothing)."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    return "worker_process_setup_hook" in (job.get("runtime_env") or {})


def _local(cfg: RayConfig, address: str | None) -> tuple[Connection, runtime.Runtime | None]:
    """The shared runtime for this config (started if none is up), or a throwaway local Ray."""
    if cfg.runtime == "throwaway" or address == "local":
        return Connection(True, "throwaway"), None
    joined = runtime.ensure(runtime.shape(cfg, local_cluster_spec(cfg).nodes[0]), cfg.idle_stop_s)
    if joined is None:
        up = runtime.current()
        note = f"the shared runtime{f' at {up.address}' if up else ''} serves other resources and is busy"
        return Connection(True, "throwaway", note=note), None
    runtime.use_token()
    up = joined.runtime
    note = joined.reason or (
        f"stops after {duration(up.idle_stop_s)} idle"
        if joined.action == "started"
        else f"up {duration(time.time() - up.started_at)}"
    )
    return Connection(True, joined.action, up.address, note), up


def disconnect(*, shutdown: bool = True) -> None:
    """Leave the session ``connect`` started (a throwaway local Ray stops with it; the shared
    runtime counts this driver gone). Without ``shutdown`` this process stays connected: for a
    driver about to exit, whose exit ends its Ray job."""
    if shutdown:
        ray.shutdown()
    runtime.detach()


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
    """Whether ``connect`` would use a local Ray (rather than join a cluster or reuse this
    process's session)."""
    return not ray.is_initialized() and (address or cfg.address) in (None, "local") and "RAY_ADDRESS" not in os.environ


def joins_cluster(cfg: RayConfig, address: str | None = None) -> bool:
    """Whether the run's Ray is a cluster (other nodes may run its steps), not a Ray of this machine
    that a driver started: this process's own session, the shared runtime or a throwaway one."""
    if ray.is_initialized():
        node = ray._private.worker._global_node  # this process's Ray: did its ray.init start it?
        on_shared_runtime = warm.DRIVER_CWD in (ray.get_runtime_context().runtime_env.get("env_vars") or {})
        return not (node is not None and node.head) and not on_shared_runtime
    return not is_local(cfg, address)


def local_cluster_spec(cfg: RayConfig) -> ClusterSpec:
    """The one node a local Ray would offer, known without starting it: CPUs and GPUs as Ray
    detects them (or as configured) and the configured custom resources."""
    import psutil
    from ray._private.accelerators import get_accelerator_manager_for_resource
    from ray._private.utils import get_num_cpus

    gpus = cfg.num_gpus
    if gpus is None:
        manager = get_accelerator_manager_for_resource("GPU")
        gpus = manager.get_current_node_num_accelerators() if manager is not None else 0
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


def head_node_id() -> str:
    """The id of the cluster's head node (the one Ray marks with ``node:__internal_head__``)."""
    head = next((n["NodeID"] for n in ray.nodes() if n.get("Alive") and HEAD_RESOURCE in n.get("Resources", {})), None)
    if head is None:
        raise SchedulingTimeoutError("the Ray cluster reports no head node alive; is it shutting down?")
    return head


def driver_node_id() -> str:
    return ray.get_runtime_context().get_node_id()


HEAD_RESOURCE = "node:__internal_head__"
