"""The local runtime, as its drivers see it: one Ray on this machine that the runs of a working
session share, its record, and joining, leaving or stopping it.

With ``ray.address`` unset, the first ``rto run`` starts a local Ray through a small supervisor
process (``raytrain_orch.ray.supervisor``) that owns ``ray start --head --block``; later runs on
this machine join it instead of starting their own, saving Ray's start and stop on every run.
The supervisor stops Ray once no driver has used it for ``ray.idle_stop_s`` (the drivers that
joined it register under ``drivers/``; a killed one no longer counts); ``rto down`` stops it
now. ``ray.runtime: throwaway`` (``--throwaway-ray``) gives a run a private Ray that stops with
it, as before.

A run on a shared runtime still sees the code as it is now: every run is a new Ray job, and a
job's workers are its own processes that import the job module afresh. What a worker process
inherits from the runtime's environment is brought up to date with the driver's through the
job's ``runtime_env`` (``env_vars``): the variables whose values differ from those the runtime
was started with.

Where it lives: ``$RTO_HOME/runtime/`` (``RTO_HOME`` defaults to ``~/.cache/raytrain_orch``)
holds ``runtime.json`` (address, supervisor pid, what it was started for), a lock file and the
logs of the supervisor and of ``ray start``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Mapping

from raytrain_orch.core.config import RayConfig
from raytrain_orch.core.errors import ConfigError
from raytrain_orch.core.text import duration

#: Ray's settings for a local Ray: a run's idle task workers (torch and the job imported) are
#: kept for its next task steps instead of being killed a second after they go idle while a train
#: step's actors push the node over its worker soft limit (a job's workers end with the job).
SYSTEM_CONFIG = MappingProxyType({"idle_worker_killing_time_threshold_ms": 120_000})

#: How long ``ensure`` waits for a new runtime's GCS and jobs API to answer.
START_TIMEOUT_S = 120.0

#: Never passed from a driver's environment to its workers on the shared runtime: they describe
#: the driver's own process or shell, or Ray sets them per process.
NOT_PASSED = frozenset(
    {"_", "PWD", "OLDPWD", "SHLVL", "TERM", "COLUMNS", "LINES", "RAY_ADDRESS", "RAY_JOB_ID", "RAY_RAYLET_PID"}
    | {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}  # the runtime has a token of its own
)
_NOT_PASSED_PREFIXES = ("RAY_JOB_CONFIG", "RAY_NODE_", "RAY_RUNTIME_ENV_")


def home() -> Path:
    return Path(os.environ.get("RTO_HOME") or "~/.cache/raytrain_orch").expanduser()


def runtime_dir() -> Path:
    return home() / "runtime"


def ray_temp_dir() -> str:
    """The runtime's Ray temp dir: its own (so its address file is not where other local Ray
    drivers look), and short (socket paths are limited to ~107 characters)."""
    return os.path.join(tempfile.gettempdir(), f"rto-ray-{hashlib.sha256(str(home()).encode()).hexdigest()[:8]}")


@dataclass(frozen=True)
class Runtime:
    """What ``runtime.json`` records of the running local runtime."""

    address: str  # the GCS, 127.0.0.1:PORT
    dashboard: str  # http://127.0.0.1:PORT
    supervisor_pid: int
    supervisor_started: float  # the supervisor's process start time (psutil), against pid reuse
    started_at: float
    idle_stop_s: float
    shape: dict[str, Any]  # what it was started for (``shape``): a run wanting another starts its own
    env: dict[str, str] = field(default_factory=dict)  # name → digest of the value its processes got

    @classmethod
    def load(cls, path: Path) -> Runtime | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None

    def save(self, path: Path) -> None:
        """Write the record whole or not at all: a reader never sees half of it."""
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(asdict(self)))
        partial.replace(path)

    def alive(self) -> bool:
        import psutil

        try:
            process = psutil.Process(self.supervisor_pid)
            return abs(process.create_time() - self.supervisor_started) < 1e-3 and process.is_running()
        except psutil.NoSuchProcess:
            return False

    def describe(self, now: float | None = None) -> str:
        up = duration((now or time.time()) - self.started_at)
        return f"{self.address} (up {up}; stops after {duration(self.idle_stop_s)} idle)"


def shape(cfg: RayConfig, node: Mapping[str, float]) -> dict[str, Any]:
    """What a runtime must have been started for to serve ``cfg``: this Python and Ray, and the
    resources the config asks a local Ray to offer (``node``: them with what is unset as Ray
    would detect it)."""
    import ray

    return {
        "python": sys.executable,
        "ray": ray.__version__,
        "num_cpus": int(node["CPU"]),
        "num_gpus": int(node.get("GPU", 0)),
        "resources": dict(sorted((cfg.resources or {}).items())) or None,
    }


def env_digest(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: hashlib.sha256(v.encode()).hexdigest()[:16] for k, v in environ.items()}


def env_update(runtime_env: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """The driver's variables whose values the runtime's processes do not have (by digest)."""
    mine = env_digest(environ)
    return {
        k: environ[k]
        for k in sorted(environ)
        if runtime_env.get(k) != mine[k] and k not in NOT_PASSED and not k.startswith(_NOT_PASSED_PREFIXES)
    }


def use_token() -> None:
    """Make this process present the runtime's own token (``runtime/auth_token``): the local
    runtime runs with Ray's token authentication, as ``ray start`` does by default."""
    from raytrain_orch.ray import auth

    path = str(runtime_dir() / "auth_token")
    if os.environ.get("RAY_AUTH_MODE") == "token" and os.environ.get("RAY_AUTH_TOKEN_PATH") == path:
        return
    os.environ.pop("RAY_AUTH_TOKEN", None)  # would win over the path
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=path)
    if "ray" in sys.modules:
        auth.reload_auth_mode()


def _make_token() -> None:
    import secrets

    path = runtime_dir() / "auth_token"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))


def current() -> Runtime | None:
    """The local runtime that is up, or None (a record whose supervisor is gone is removed)."""
    record = runtime_dir() / "runtime.json"
    runtime = Runtime.load(record)
    if runtime is not None and not runtime.alive():
        record.unlink(missing_ok=True)
        return None
    return runtime


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """One ``rto`` at a time decides whether to start, reuse or stop the runtime."""
    directory = runtime_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "runtime.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Joined:
    runtime: Runtime
    action: str  # "started" | "reused" | "restarted"
    reason: str = ""


def ensure(wanted: dict[str, Any], idle_stop_s: float) -> Joined | None:
    """The shared runtime of shape ``wanted``: the one up, or a new one. None when the one up
    was started for other resources and is busy (the caller then uses a throwaway Ray)."""
    with locked():
        runtime = current()
        if runtime is not None and runtime.shape == wanted:
            joined = Joined(runtime, "reused")
        elif runtime is not None:
            if set(live_drivers()) - {os.getpid()}:  # (this process, attached before, is not using it now)
                return None
            _stop(runtime)
            joined = Joined(_start(wanted, idle_stop_s), "restarted", _difference(runtime.shape, wanted))
        else:
            joined = Joined(_start(wanted, idle_stop_s), "started")
        attach()  # under the lock: the supervisor cannot decide it is idle in between
        return joined


def _difference(had: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    changed = [f"{k} {had.get(k)!r} → {wanted[k]!r}" for k in wanted if had.get(k) != wanted[k]]
    return "; ".join(changed)


def _start(wanted: dict[str, Any], idle_stop_s: float) -> Runtime:
    directory = runtime_dir()
    _make_token()
    log = open(directory / "supervisor.log", "ab")
    command = [sys.executable, "-m", "raytrain_orch.ray.supervisor", json.dumps(wanted), str(idle_stop_s)]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # outlives this driver, and Ctrl-C in its terminal
        cwd=directory,
    )
    log.close()
    record = directory / "runtime.json"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        runtime = Runtime.load(record)
        if runtime is not None and runtime.supervisor_pid == process.pid:
            return runtime
        if process.poll() is not None:
            break
        time.sleep(0.1)
    _stop_group(process)
    tail = (directory / "supervisor.log").read_text(errors="replace").strip().splitlines()[-3:]
    raise ConfigError(
        f"the local Ray did not start ({' / '.join(tail) or 'no output'}); see {directory / 'supervisor.log'}, "
        "or run with --throwaway-ray"
    )


def _stop_group(supervisor: subprocess.Popen) -> None:
    """A supervisor that did not come up: SIGTERM (it stops its Ray), then its whole group."""
    if supervisor.poll() is None:
        supervisor.terminate()
        try:
            supervisor.wait(30)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(supervisor.pid, signal.SIGKILL)


def stop(force: bool = False) -> tuple[Runtime | None, list[str]]:
    """Stop the runtime now. Returns (the runtime stopped or None, the live jobs that kept it
    up when not ``force``)."""
    with locked():
        runtime = current()
        if runtime is None:
            return None, []
        jobs = [str(pid) for pid in live_drivers()]
        if jobs and not force:
            return runtime, jobs
        _stop(runtime)
        return runtime, []


def _stop(runtime: Runtime, timeout: float = 60.0) -> None:
    import psutil

    try:
        os.kill(runtime.supervisor_pid, signal.SIGTERM)
        psutil.Process(runtime.supervisor_pid).wait(timeout)
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass
    except psutil.TimeoutExpired:
        os.killpg(runtime.supervisor_pid, signal.SIGKILL)
    (runtime_dir() / "runtime.json").unlink(missing_ok=True)


def attach() -> None:
    """Count this process as a driver of the runtime until it exits (``drivers/PID-START``)."""
    import psutil

    me = psutil.Process()
    directory = runtime_dir() / "drivers"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{me.pid}-{me.create_time():.3f}").touch()


def detach() -> None:
    import psutil

    me = psutil.Process()
    (runtime_dir() / "drivers" / f"{me.pid}-{me.create_time():.3f}").unlink(missing_ok=True)


def live_drivers() -> list[int]:
    """The pids of the drivers attached to the runtime that are still running (the files of
    drivers that died without detaching are removed)."""
    import psutil

    alive = []
    for entry in sorted((runtime_dir() / "drivers").glob("*-*")):
        pid, started = entry.name.split("-", 1)
        try:
            if abs(psutil.Process(int(pid)).create_time() - float(started)) < 1e-2:
                alive.append(int(pid))
                continue
        except (psutil.NoSuchProcess, ValueError):
            pass
        entry.unlink(missing_ok=True)
    return alive
