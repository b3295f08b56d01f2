"""Warm processes for Ray Train and for task steps: started ahead of need, with the pipeline's
modules already imported.

Ray Train V2 starts N + 5 Python processes for every ``fit()`` (its controller, a placement
group cleaner, a synchronization actor, a dataset manager, a preemption watcher and N workers).
Ray gives a new actor an idle worker process of the same job only when both carry the same
runtime environment, compared as the serialised string; Ray Train sets ``env_vars`` on its
controller, and its other actors inherit them, so the job's own idle workers never match and
every ``fit()`` waits for cold processes that import Ray Train and torch before the loop runs.

Two things make them warm:

- ``Prestarter`` asks the driver's raylet (its ``PrestartWorkers`` call) for idle workers
  carrying exactly the runtime environment Ray Train's actors will get (``train_runtime_env``),
  ahead of a train step, and for idle workers of the job's own environment, kept alive across a
  long train step so that the task steps after it start warm (Ray kills idle workers after a
  while otherwise).
- ``worker_setup``, the job's ``worker_process_setup_hook``, imports the modules named in
  ``PRELOAD_VAR`` (the pipeline's module, Ray Train, torch) in every new worker that stays idle
  for a moment (``preload.Preload``), so that a prestarted process is ready when it is handed
  out, and one started for work imports only what that work needs.

Both are best effort: whatever fails leaves the steps starting cold, as before, never failing.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import sys
import threading
import time
from typing import Any, Callable, Sequence

from raytrain_orch.ray.preload import Preload
from raytrain_orch.ray.runtime import SYSTEM_CONFIG

logger = logging.getLogger(__name__)

#: The driver's working directory, for the workers of a run on the shared runtime.
DRIVER_CWD = "RTO_DRIVER_CWD"

#: The job's ``worker_process_setup_hook``: ``worker_setup`` below.
SETUP_HOOK = f"{__name__}.worker_setup"

#: The modules a worker imports in the background as it starts (comma-separated).
PRELOAD_VAR = "RTO_PRELOAD"

#: What every process of a ``fit()`` imports, whatever its role: Ray Train's core (~0.8 CPU-s here).
TRAIN_CORE_MODULES = ("ray.train.v2._internal.execution.worker_group.worker",)

#: What a worker imports before its loop runs: torch and the step's code (~2.8 CPU-s with the
#: pipeline's module). Only N of a ``fit()``'s N + 5 processes are workers and a prestarted process
#: does not know its role, so preloading these everywhere spent ~2 CPU-s in each helper: on 2 CPUs
#: the demo's train step reached its first epoch ~2.5 s later than with the core alone
#: (docs/benchmarks.md). ``RTO_TRAIN_PRELOAD=full`` preloads them too, for nodes with CPUs to spare.
TRAIN_MODULES = ("torch.distributed", "ray.train.torch", "raytrain_orch.ray.train")

#: ``full``, or unset: what Ray Train's processes preload (above).
TRAIN_PRELOAD_VAR = "RTO_TRAIN_PRELOAD"

#: How long a prestarted worker stays although idle. A job's workers end with the job, so a long
#: keep-alive costs nothing after the run; it lets a task step after a day-long train step start warm.
KEEP_ALIVE_S = 24 * 3600

#: How long a new worker takes to start here, between the raylet's batches (it starts at most as
#: many at once as the node has CPUs, and drops the rest of a larger request).
BATCH_INTERVAL_S = 2.0

#: Where the preload modules are found (``os.pathsep``-separated directories).
PRELOAD_PATH_VAR = "RTO_PRELOAD_PATH"

#: What Ray Train sets in the environment of its controller, and so of every process of a ``fit()``
#: (``ray.train.v2._internal.constants``): it tells Ray Train's processes from the job's task workers,
#: which preload only the pipeline's module.
TRAIN_ENV_VAR = "RAY_WARN_BLOCKING_GET_INSIDE_ASYNC"

#: When a train step has run this long, a task worker is prestarted for the task steps after it:
#: before the local runtime's idle task workers time out (``runtime.SYSTEM_CONFIG``).
TASK_PRESTART_DELAY_S = 0.75 * SYSTEM_CONFIG["idle_worker_killing_time_threshold_ms"] / 1000

#: How often a waiting prestart checks whether it is due.
POLL_S = 0.5

#: Processes one ``fit()`` starts besides its N workers.
TRAIN_HELPERS = 5

#: What the raylet grants at most in one ``PrestartWorkers`` call (Ray's
#: ``restart_workers_api_max_num_workers``).
MAX_PER_CALL = 10


def preload_env(modules: Sequence[str]) -> dict[str, str]:
    """The job's environment variables that make its workers preload ``modules``, found where
    this driver finds them (Ray gives a worker the driver's import path only with its first task)."""
    names = list(dict.fromkeys(m for m in modules if m))
    if not names:
        return {}
    roots = sorted({root for name in names if (root := _import_root(name))})
    return {PRELOAD_VAR: ",".join(names), **({PRELOAD_PATH_VAR: os.pathsep.join(roots)} if roots else {})}


def _import_root(module: str) -> str | None:
    """The directory on ``sys.path`` that ``module`` is imported from here, if any."""
    try:
        spec = importlib.util.find_spec(module.partition(".")[0])
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:  # a package: its directory's parent
        return os.path.dirname(os.path.abspath(list(spec.submodule_search_locations)[0]))
    return os.path.dirname(os.path.abspath(spec.origin)) if spec.origin else None


def worker_setup() -> None:
    """Ray's ``worker_process_setup_hook`` for a run's workers: enter the driver's directory on the
    shared runtime, then import, while the process waits for work (``preload.Preload``), what its
    work will need: a task worker the pipeline's module, a process of Ray Train's ``fit()`` Ray
    Train's core (all of a worker's needs with ``RTO_TRAIN_PRELOAD=full``)."""
    enter_driver_cwd()
    # After the interpreter's own path: Ray puts the driver's in front with the first task.
    sys.path.extend(p for p in os.environ.get(PRELOAD_PATH_VAR, "").split(os.pathsep) if p and p not in sys.path)
    modules = [m for m in os.environ.get(PRELOAD_VAR, "").split(",") if m]
    if TRAIN_ENV_VAR in os.environ:
        full = os.environ.get(TRAIN_PRELOAD_VAR) == "full"
        modules = [*modules, *TRAIN_CORE_MODULES, *TRAIN_MODULES] if full else list(TRAIN_CORE_MODULES)
    if modules:
        Preload(modules).start()


def fit_threads_to_cpus() -> None:
    """Size torch's thread pool to the CPUs this worker holds, as a cold worker's is. A prestarted
    worker imported torch before it held any, so torch sized its pool to the whole node: on a
    2-CPU node two DDP workers each ran two threads and their epochs took 2.5 times as long.
    ``OMP_NUM_THREADS``, where the user or Ray set it, decides."""
    import ray
    import torch

    wanted = os.environ.get("OMP_NUM_THREADS") or ray.get_runtime_context().get_assigned_resources().get("CPU")
    try:
        threads = max(1, int(float(wanted))) if wanted else 0
    except ValueError:
        return
    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def enter_driver_cwd() -> None:
    """Each worker of a run on the shared runtime starts where its driver runs, as a local Ray's
    workers do (the runtime's own processes run in its directory): relative paths in steps
    mean what they meant when the run was started."""
    cwd = os.environ.get(DRIVER_CWD)
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)


def train_runtime_env(job_runtime_env: str, propagated: dict[str, str] | None = None) -> str:
    """The runtime environment Ray Train's actors get in a job whose own is ``job_runtime_env``,
    serialised as Ray's core worker writes an actor's (sorted keys, compact): the job's, with the
    environment variables Ray Train passes from the driver to its controller and workers."""
    if propagated is None:
        propagated = _train_env_vars()
    env = json.loads(job_runtime_env or "{}")
    env["env_vars"] = {**(env.get("env_vars") or {}), **propagated}
    return json.dumps(env, sort_keys=True, separators=(",", ":"))


def _train_env_vars() -> dict[str, str]:
    """What Ray Train's ``TorchTrainer.fit`` sets on its controller (``data_parallel_trainer.py``)."""
    from ray.train.v2._internal.constants import (
        DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE,
        RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR,
        get_env_vars_to_propagate,
    )

    env_vars = get_env_vars_to_propagate()
    env_vars.setdefault(RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR, DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE)
    return env_vars


def train_processes(num_workers: int) -> int:
    """Processes one ``fit()`` of ``num_workers`` workers starts on the driver's node, bounded by
    what one call to the raylet grants."""
    return min(num_workers + TRAIN_HELPERS, MAX_PER_CALL)


class Prestarter:
    """Idle workers of this driver's job, prestarted on its node by a background thread."""

    def __init__(self) -> None:
        import ray

        self._job = bytes.fromhex(ray.get_runtime_context().get_job_id())
        self._env_info = ray._private.worker.global_worker.core_worker.get_job_config().runtime_env_info  # type: ignore[attr-defined]
        here = ray.get_runtime_context().get_node_id()
        node = next(n for n in ray.nodes() if n["NodeID"] == here)
        self._raylet = f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"
        self._batch = max(1, int(node["Resources"].get("CPU", 1)))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def train(self, num_workers: int, ready: Callable[[], bool] | None = None) -> None:
        """Prestart what one ``fit()`` of ``num_workers`` workers will ask for, once ``ready()``:
        the raylet starts workers a few at a time, and the one the run's first task step waits
        for goes first."""
        serialized = train_runtime_env(self._env_info.serialized_runtime_env)
        self._start(train_processes(num_workers), serialized, ready or (lambda: True))

    def tasks(self, count: int = 1, delay_s: float = TASK_PRESTART_DELAY_S) -> None:
        """Prestart ``count`` workers of the job's own environment after ``delay_s``, unless the
        run ends first: the task steps after a train step that outlasts Ray's idle-worker timeout
        start in them (a shorter one leaves the job's idle task workers alive)."""
        due = time.monotonic() + delay_s
        self._start(count, self._env_info.serialized_runtime_env, lambda: time.monotonic() >= due)

    def close(self) -> None:
        """Stop prestarting, and wait for the threads: a gRPC call still running as the
        interpreter exits can crash it."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def _start(self, count: int, serialized: str, ready: Callable[[], bool]) -> None:
        thread = threading.Thread(
            target=self._prestart, args=(count, serialized, ready), name="rto-prestart", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _prestart(self, count: int, serialized: str, ready: Callable[[], bool]) -> None:
        """Ask in batches: the raylet starts at most as many workers at once as its node has
        CPUs, and drops the rest of a larger request."""
        while not ready():
            if self._stop.wait(POLL_S):
                return
        channel = None
        try:
            channel, stub, request = self._request(serialized)
            with self._lock:  # one request at a time: batches of two requests would overlap
                while count > 0 and not self._stop.is_set():
                    request.num_workers = min(count, self._batch)
                    stub.PrestartWorkers(request, timeout=10)
                    count -= request.num_workers
                    self._stop.wait(BATCH_INTERVAL_S)
        except Exception as error:  # noqa: BLE001 — Ray's internal API moved: steps start cold, as before
            logger.debug("prestarting workers failed: %s", error)
        finally:
            if channel is not None:
                channel.close()

    def _request(self, serialized: str) -> tuple[Any, Any, Any]:
        from ray._private.grpc_utils import init_grpc_channel
        from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc, runtime_environment_pb2

        # Protobuf modules, which carry no type stubs.
        info = runtime_environment_pb2.RuntimeEnvInfo()  # type: ignore[attr-defined]
        info.CopyFrom(self._env_info)
        info.serialized_runtime_env = serialized
        channel = init_grpc_channel(self._raylet)
        stub = node_manager_pb2_grpc.NodeManagerServiceStub(channel)
        python = common_pb2.PYTHON  # type: ignore[attr-defined]
        request = node_manager_pb2.PrestartWorkersRequest(  # type: ignore[attr-defined]
            language=python, job_id=self._job, runtime_env_info=info, keep_alive_duration_secs=KEEP_ALIVE_S
        )
        return channel, stub, request
