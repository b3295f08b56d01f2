"""The local runtime's supervisor: its own process (``python -m raytrain_orch.ray.supervisor
SHAPE IDLE_STOP_S``, started by ``runtime.ensure``) that owns ``ray start --head --block``,
writes the runtime's record once Ray answers, and stops Ray when no driver has used it for
``idle_stop_s`` or when it gets SIGTERM (``rto down``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping

import psutil

from raytrain_orch.core.errors import EXIT_OK, EXIT_PIPELINE_FAILED
from raytrain_orch.core.text import duration
from raytrain_orch.ray.runtime import (
    START_TIMEOUT_S,
    SYSTEM_CONFIG,
    Runtime,
    env_digest,
    live_drivers,
    locked,
    ray_temp_dir,
    runtime_dir,
    use_token,
)


class IdleClock:
    """When the runtime has had no driver for ``idle_stop_s``: the supervisor asks ``busy`` every
    poll and stops the runtime once it has been idle that long."""

    def __init__(self, idle_stop_s: float, clock: Callable[[], float] = time.monotonic):
        self.idle_stop_s, self.clock = idle_stop_s, clock
        self.idle_since: float | None = clock()

    def expired(self, busy: bool) -> bool:
        now = self.clock()
        if busy:
            self.idle_since = None
            return False
        if self.idle_since is None:
            self.idle_since = now
        return now - self.idle_since >= self.idle_stop_s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start_command(wanted: Mapping[str, Any], temp_dir: str) -> tuple[list[str], str, str]:
    # Free ports for all that Ray would otherwise put on its fixed defaults (6379, 8265, 10001,
    # 52365), so that a cluster the user starts with `ray start` on this machine still gets them.
    gcs, dashboard, client, agent = _free_port(), _free_port(), _free_port(), _free_port()
    command = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    if wanted.get("num_cpus") is not None:
        command.append(f"--num-cpus={wanted['num_cpus']}")
    if wanted.get("num_gpus") is not None:
        command.append(f"--num-gpus={wanted['num_gpus']}")
    if wanted.get("resources"):
        command.append(f"--resources={json.dumps(wanted['resources'])}")
    return command, f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}"


def serve(wanted: dict[str, Any], idle_stop_s: float, poll_s: float | None = None) -> int:
    """Run Ray until it has been idle for ``idle_stop_s`` or this process gets SIGTERM; return
    the supervisor's exit code (a failure when Ray did not come up)."""
    directory = runtime_dir()
    command, address, dashboard = _ray_start_command(wanted, ray_temp_dir())
    use_token()
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    environment.update({f"RAY_{k}": str(v) for k, v in SYSTEM_CONFIG.items() if f"RAY_{k}" not in environment})
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append("SIGTERM"))
    signal.signal(signal.SIGINT, lambda *_: stopping.append("SIGINT"))
    with open(directory / "ray-start.log", "wb") as log:
        ray_start = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=directory)
    try:
        if not _wait_ready(ray_start, dashboard, stopping):
            print(f"ray start did not come up; its log: {directory / 'ray-start.log'}", flush=True)
            return EXIT_PIPELINE_FAILED
        record = directory / "runtime.json"
        _this_runtime(address, dashboard, wanted, idle_stop_s, environment).save(record)
        print(f"local Ray up at {address}, dashboard {dashboard}", flush=True)
        idle = IdleClock(idle_stop_s)
        poll_s = poll_s or max(0.5, min(5.0, idle_stop_s / 4))
        while not stopping and ray_start.poll() is None:
            if idle.expired(busy=bool(live_drivers())) and _retire(record):
                print(f"idle for {duration(idle_stop_s)}: stopping", flush=True)
                break
            _sleep(poll_s, stopping)
        if ray_start.poll() is not None and not stopping:
            print(f"ray start exited with {ray_start.returncode}; see {directory / 'ray-start.log'}", flush=True)
        return EXIT_OK
    finally:
        record = directory / "runtime.json"
        if (mine := Runtime.load(record)) is not None and mine.supervisor_pid == os.getpid():
            record.unlink(missing_ok=True)
        _stop_ray(ray_start)


def _this_runtime(
    address: str, dashboard: str, wanted: dict[str, Any], idle_stop_s: float, environment: Mapping[str, str]
) -> Runtime:
    """The record of the runtime this process supervises."""
    me = psutil.Process()
    return Runtime(
        address=address,
        dashboard=dashboard,
        supervisor_pid=me.pid,
        supervisor_started=me.create_time(),
        started_at=time.time(),
        idle_stop_s=idle_stop_s,
        shape=dict(wanted),
        env=env_digest(environment),
    )


def _retire(record: Path) -> bool:
    """Withdraw the runtime's record unless a driver attached meanwhile (under the lock that
    ``ensure`` holds while it attaches one): from then on no run joins it."""
    with locked():
        if live_drivers():
            return False
        record.unlink(missing_ok=True)
        return True


def _wait_ready(ray_start: subprocess.Popen, dashboard: str, stopping: list[str]) -> bool:
    """Until the jobs API answers (Ray Train and the state API need the dashboard up)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and not stopping and ray_start.poll() is None:
        try:
            with urllib.request.urlopen(f"{dashboard}/api/version", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # it answers (asking for the token)
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    return False


def _stop_ray(ray_start: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM to ``ray start --block`` and every process under it at once, as ``ray stop``
    does; what is still up after ``grace_s`` (Ray's agents ignore SIGTERM) is killed."""
    try:
        root = psutil.Process(ray_start.pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(family, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        ray_start.wait(5)


def _sleep(seconds: float, stopping: list[str]) -> None:
    deadline = time.monotonic() + seconds
    while not stopping and time.monotonic() < deadline:
        time.sleep(min(0.2, seconds))


if __name__ == "__main__":
    sys.exit(serve(json.loads(sys.argv[1]), float(sys.argv[2])))
