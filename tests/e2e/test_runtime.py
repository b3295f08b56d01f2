"""The shared local runtime for real: ``rto run`` starts it, the next run reuses it and still
runs the code as it is now, it stops by itself once idle and at ``rto down``, a throwaway Ray
leaves nothing behind, and a driver SIGKILLed on it is resumed on it.

Each test has its own ``RTO_HOME``, so its runtime is its own (the session's shared one is untouched).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.conftest import REPO, isolated, write_config

pytestmark = pytest.mark.e2e

RTO = str(Path(sys.executable).parent / "rto")

STEPS = """
from pathlib import Path

from raytrain_orch import Artifact, Pipeline, StepContext

pipeline = Pipeline("edited")


@pipeline.task
def source(ctx: StepContext) -> dict[str, float]:
    # A relative path means what it meant where the run was started (the repository here).
    return {"value": VALUE, "in_driver_dir": float(Path("tests/pipelines").is_dir())}


@pipeline.task
def double(ctx: StepContext, source: Artifact) -> dict[str, float]:
    return {"value": source.metrics["value"] * 2}
"""


def rto(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RTO_HOME": str(home)}
    return subprocess.run([RTO, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def record(home: Path) -> dict | None:
    path = home / "runtime" / "runtime.json"
    return json.loads(path.read_text()) if path.exists() else None


def ray_processes(home: Path) -> list[psutil.Process]:
    """The processes of the runtime kept under ``home`` (their command lines name its temp dir)."""
    from raytrain_orch.ray import runtime

    previous = os.environ.get("RTO_HOME")
    os.environ["RTO_HOME"] = str(home)
    try:
        temp_dir = runtime.ray_temp_dir()
    finally:
        os.environ.pop("RTO_HOME") if previous is None else os.environ.update(RTO_HOME=previous)
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(temp_dir in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def train_processes() -> list[psutil.Process]:
    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [""])[0].startswith(("ray::RayTrainWorker", "ray::TrainController"))
    ]


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout_s} s")


@pytest.fixture()
def edited(tmp_path):
    """A pipeline module under tests/pipelines that a test rewrites between runs."""
    module = REPO / "tests" / "pipelines" / f"_runtime_{os.getpid()}.py"
    config = write_config(tmp_path, "edited", f"tests.pipelines.{module.stem}:pipeline", {})
    yield module, config
    module.unlink(missing_ok=True)


def test_the_next_run_reuses_the_runtime_and_runs_the_code_as_it_is_now(tmp_path, edited):
    home = tmp_path / "home"
    module, config = edited
    try:
        module.write_text(STEPS.replace("VALUE", "2.0"))
        first = rto(home, "run", str(config))
        assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
        up = record(home)
        assert up is not None and f"ray: started the local runtime at {up['address']}" in first.stdout

        module.write_text(STEPS.replace("VALUE", "5.0"))  # the user edits a step
        second = rto(home, "run", str(config))
        assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
        assert f"ray: reusing the local runtime at {up['address']}" in second.stdout
        assert record(home)["supervisor_pid"] == up["supervisor_pid"]  # the same Ray, not a new one

        state = RunStore(Storage(str(tmp_path / "rto-runs"))).latest()
        assert state.status is Status.SUCCEEDED
        assert state.steps["double"].metrics["value"] == 10.0  # the edited source, not the first run's 2.0
        assert state.steps["source"].metrics["in_driver_dir"] == 1.0  # not the runtime's own directory
        assert state.driver["ray_runtime"] == {"action": "reused", "address": up["address"]}

        plan = rto(home, "plan", str(config))
        assert f"local Ray: the shared runtime is up at {up['address']}" in plan.stdout

        down = rto(home, "down")
        assert down.returncode == 0 and f"stopped the local runtime at {up['address']}" in down.stdout
        assert record(home) is None
        wait_until(lambda: not ray_processes(home), 30, "the runtime's Ray processes end")
        assert "no local runtime is up" in rto(home, "down").stdout
        assert "local Ray: none up" in rto(home, "plan", str(config)).stdout
    finally:
        rto(home, "down", "--force")


def test_the_runtime_stops_by_itself_once_idle(tmp_path, edited):
    home = tmp_path / "home"
    module, config = edited
    module.write_text(STEPS.replace("VALUE", "1.0"))
    try:
        done = rto(home, "run", str(config), "--set", "ray.idle_stop_s=3")
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        supervisor = psutil.Process(record(home)["supervisor_pid"])
        assert ray_processes(home)  # up after the run: the next run would reuse it

        supervisor.wait(timeout=60)  # 3 s idle, then Ray's own shutdown
        assert record(home) is None
        wait_until(lambda: not ray_processes(home), 30, "the idle runtime's Ray processes end")
        assert "idle for 3.0 s: stopping" in (home / "runtime" / "supervisor.log").read_text()
    finally:
        rto(home, "down", "--force")


def test_a_throwaway_ray_leaves_no_process_and_no_runtime(tmp_path, edited):
    home = tmp_path / "home"
    module, config = edited
    module.write_text(STEPS.replace("VALUE", "1.0"))
    done = rto(home, "run", str(config), "--throwaway-ray")

    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "ray: a throwaway local Ray for this run" in done.stdout
    assert record(home) is None
    state = RunStore(Storage(str(tmp_path / "rto-runs"))).latest()
    started = state.driver["local_ray_processes"]
    assert len(started) >= 3  # gcs_server, raylet, the agents...
    wait_until(
        lambda: not any(psutil.pid_exists(pid) and _same(pid, at) for pid, at in started),
        30,
        "the throwaway Ray's processes end",
    )


def _same(pid: int, started: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - started) < 1e-3
    except psutil.NoSuchProcess:
        return False


def test_a_driver_killed_on_the_shared_runtime_is_resumed_on_it(tmp_path):
    home = tmp_path / "home"
    # The driver's lease would outlive the test unless the resume releases it: a resume that
    # finishes at all was not left to wait it out.
    env = {**os.environ, "RTO_HOME": str(home), "RTO_LEASE_TTL_S": "3600"}
    overrides = [*isolated(tmp_path), "train.params.epochs=40", "train.params.batch_size=16"]
    command = [RTO, "run", "configs/digits.yaml", *[a for o in overrides for a in ("--set", o)]]
    try:
        driver = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        seen = []
        for line in driver.stdout:
            seen.append(line)
            if "train      epoch 6/40" in line:
                break
        else:
            raise AssertionError("training never reached epoch 6:\n" + "".join(seen)[-3000:])
        up = record(home)
        assert train_processes()  # training, in the shared runtime
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)

        # Ray ends a dead driver's job: its train workers and controller go, the runtime stays.
        wait_until(lambda: not train_processes(), 60, "the killed driver's train workers and controller end")
        assert record(home) == up and psutil.pid_exists(up["supervisor_pid"])

        store = RunStore(Storage(str(tmp_path / "rto-runs")))
        run_id = store.latest().run_id
        resumed = rto(home, "resume", run_id, "--storage", str(tmp_path / "rto-runs"))
        assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
        assert f"ray: reusing the local runtime at {up['address']}" in resumed.stdout

        state = store.load(run_id)
        assert state.status is Status.SUCCEEDED
        events = store.events(run_id)
        restored = [e for e in events if e["event"] == "restored"][-1]
        assert restored["epoch"] is not None and restored["epoch"] >= 4  # from a checkpoint, not epoch 0
        assert state.driver["local_ray_processes"] == []  # nothing of the shared runtime is the run's to reap
    finally:
        rto(home, "down", "--force")
