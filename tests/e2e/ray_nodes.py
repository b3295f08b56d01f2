"""Real Ray nodes on 127.0.0.1 for end-to-end tests: ``ray start --block`` in its own process
group (stopped by that group's id), with Ray's token authentication.

The token is this test session's own (a file named by ``RAY_AUTH_TOKEN_PATH``), so the tests
need no ``~/.ray/auth_token`` and leave none behind. Ray reads its auth mode when it is
imported, so everything that talks to these nodes runs as a subprocess with ``env()`` — the
``ray`` and ``rto`` CLIs, and ``query()`` for Python checks.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import psutil

from tests.conftest import REPO, free_port

BIN = Path(sys.executable).parent


def token_file() -> Path:
    """This test session's Ray token (made on first use)."""
    global _TOKEN_FILE
    if _TOKEN_FILE is None:
        path = Path(tempfile.mkdtemp(prefix="rto-test-ray-")) / "auth_token"
        path.write_text(secrets.token_hex(32))
        _TOKEN_FILE = path
    return _TOKEN_FILE


_TOKEN_FILE: Path | None = None


def env(**extra: str) -> dict[str, str]:
    environment = dict(os.environ)
    environment["PATH"] = f"{BIN}{os.pathsep}{environment.get('PATH', '')}"  # `python` in a job is this venv's
    environment["RAY_AUTH_MODE"] = "token"  # the nodes run with token authentication
    if not environment.get("RAY_AUTH_TOKEN"):
        environment["RAY_AUTH_TOKEN_PATH"] = str(token_file())
    environment.update(extra)
    return environment


def ray_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The `ray` CLI, as a user runs it."""
    return subprocess.run(
        [str(BIN / "ray"), *args], cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout
    )


@contextlib.contextmanager
def ray_node(
    directory: Path,
    *,
    num_cpus: int,
    head_address: str | None = None,
    resources: dict[str, float] | None = None,
    started: list[subprocess.Popen] | None = None,
    extra_env: dict[str, str] | None = None,
    private_tmp: bool = False,
) -> Iterator[tuple[str, str]]:
    """A head (``head_address`` None) or a worker joining ``head_address``; yields the head's
    (GCS address, dashboard URL) — for a worker, (head_address, ""). ``started`` receives the
    node's ``ray start`` process (``lose`` takes the node away by it). ``extra_env``: what
    the node's processes inherit (a cloud node's credentials). ``private_tmp``: the node sees its
    own empty /tmp (``private_tmp_works``), as another machine would: nothing the tests, the
    driver or the other node keep under /tmp."""
    directory.mkdir(parents=True, exist_ok=True)
    common = ["--block", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", "--disable-usage-stats"]
    if resources:
        common.append(f"--resources={json.dumps(resources)}")
    if head_address is None:
        gcs_port, dashboard_port = free_port(), free_port()
        # Its own temp dir: the head's address file must not outlive it where other Ray drivers look.
        command = [
            "--head",
            f"--port={gcs_port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--temp-dir={directory / 'ray'}",
        ]
        address, dashboard = f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}"
    else:
        command, address, dashboard = [f"--address={head_address}"], head_address, ""
    log = open(directory / "ray-node.log", "w")
    argv, node_env = [str(BIN / "ray"), "start", *command, *common], env(**(extra_env or {}))
    if private_tmp:
        # The token file lives under this /tmp, so the node gets the token itself.
        node_env["RAY_AUTH_TOKEN"] = token_file().read_text().strip()
        node_env.pop("RAY_AUTH_TOKEN_PATH", None)
        argv = in_private_tmp(argv)
    process = subprocess.Popen(
        argv,
        env=node_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=REPO,
    )
    if started is not None:
        started.append(process)
    try:
        if head_address is None:
            _wait(lambda: ray_cli("job", "list", "--address", dashboard).returncode == 0, process, "the Ray jobs API")
        else:
            # A new node id, not a larger count: a node lost just before may leave the count as it was.
            nodes = lambda: set(query(address, "[n['NodeID'] for n in ray.nodes() if n['Alive']]"))  # noqa: E731
            before = nodes()
            _wait(lambda: bool(nodes() - before), process, "the worker node")
        yield address, dashboard
    finally:
        _stop_group(process.pid, signal.SIGTERM)  # a node a test lost may be gone already
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _stop_group(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def in_private_tmp(argv: list[str]) -> list[str]:
    """``argv`` in a new mount namespace whose /tmp is an empty tmpfs (root only)."""
    script = f"mount -t tmpfs rto-node-tmp /tmp && exec {shlex.join(argv)}"
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


def private_tmp_works() -> bool:
    """Whether this machine lets the tests give a node its own /tmp (root, and mount namespaces),
    and the node could still start there: a checkout or venv under /tmp would be hidden by it."""
    if any(p.resolve().is_relative_to("/tmp") for p in (REPO, BIN)):
        return False
    with tempfile.NamedTemporaryFile(dir="/tmp", prefix="rto-probe-") as probe:
        try:
            done = subprocess.run(in_private_tmp(["test", "!", "-e", probe.name]), capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return False
    return done.returncode == 0


def _stop_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def lose(node: subprocess.Popen) -> None:
    """The node ``ray start`` process ``node`` started goes away as a machine does: its raylet and
    every process under it (the workers, which Ray starts in their own sessions) SIGKILLed at once,
    so no worker of the node trains on while Ray notices."""
    processes = psutil.Process(node.pid).children(recursive=True)
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(processes, timeout=10)


def query(address: str, expression: str) -> object:
    """Evaluate a Python expression in a driver connected to the cluster; return its JSON value."""
    code = (
        "import json, ray, ray.util\n"
        f"ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False)\n"
        f"print('RESULT ' + json.dumps({expression}, default=str))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env(), capture_output=True, text=True, timeout=120
    )
    line = next((out for out in done.stdout.splitlines() if out.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"query failed: {done.stderr[-2000:]}")
    return json.loads(line[len("RESULT ") :])


def gangs(address: str) -> tuple[list[dict], dict | None]:
    """(every placement group that still holds or waits for resources, the admission queue's books)."""
    groups, books = query(
        address,
        "[list(ray.util.placement_group_table().values()), __import__('raytrain_orch.ray.leases', "
        "fromlist=['x']).admission_snapshot()]",
    )
    return [g for g in groups if g["state"] in ("CREATED", "PENDING", "RESCHEDULING")], books


def _wait(ready, process: subprocess.Popen, what: str, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode} before {what} answered")
        try:
            if ready():
                return
        except RuntimeError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{what} did not answer within {timeout_s} s")
