"""Gangs as Ray placement groups, and the live cluster they are checked against.

A task step's gang is reserved here, all or nothing, before its Ray task starts, and removed
when the step ends however it ends. A train step's workers are placed by Ray Train in its own
placement group (see ``train.py``); its gang is checked for feasibility here like any other.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

from . import constants
from .config import RayConfig
from .errors import ConfigError, SchedulingTimeoutError
from .plan import ClusterSpec, GangSpec

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
        kwargs.update(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)
    elif cfg.num_cpus is not None or cfg.num_gpus is not None:
        raise ConfigError("ray.num_cpus / ray.num_gpus apply to a local Ray only; remove them when joining a cluster")
    try:
        ray.init(**kwargs)
    except ConnectionError as e:
        raise ConfigError(f"cannot reach the Ray cluster at {address!r} ({e}); start it with `ray start --head` or fix --address") from None
    return True


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


def cluster_spec() -> ClusterSpec:
    """Each alive node's total resources."""
    nodes = tuple(dict(node["Resources"]) for node in ray.nodes() if node.get("Alive"))
    return ClusterSpec(nodes=nodes)


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
                f"{name}: gang {gang.describe()} was not granted within {timeout_s:g} s; the cluster is busy "
                "with other work — wait for it, or raise RTO_GANG_TIMEOUT_S"
            )
        yield group
    finally:
        remove_placement_group(group)
