"""The shared local runtime's decisions, without starting Ray: which of the driver's variables
its workers get, when it counts as idle, which drivers count, what a run prints about it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil
import pytest

from raytrain_orch.core.config import RayConfig
from raytrain_orch.core.events import Event
from raytrain_orch.core.sentences import ray_runtime
from raytrain_orch.ray import runtime, supervisor
from raytrain_orch.ray.session import local_cluster_spec


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("RTO_HOME", str(tmp_path))
    return tmp_path


def test_workers_get_the_variables_the_driver_changed_or_added_and_nothing_of_its_shell():
    started_with = runtime.env_digest({"HOME": "/root", "MY_FLAG": "1", "LR_SCALE": "2"})
    driver = {
        "HOME": "/root",  # unchanged: not sent
        "MY_FLAG": "0",  # changed since the runtime started
        "NEW_SECRET_TOKEN": "s3cr3t",  # new
        "PWD": "/somewhere",  # the driver's shell
        "RAY_ADDRESS": "127.0.0.1:1",
        "RAY_AUTH_TOKEN": "other",  # the runtime has its own token
    }

    assert runtime.env_update(started_with, driver) == {"MY_FLAG": "0", "NEW_SECRET_TOKEN": "s3cr3t"}


def test_the_record_keeps_digests_not_values():
    digest = runtime.env_digest({"API_TOKEN": "s3cr3t"})

    assert "s3cr3t" not in json.dumps(digest)
    assert digest == runtime.env_digest({"API_TOKEN": "s3cr3t"}) != runtime.env_digest({"API_TOKEN": "other"})


def test_idle_clock_stops_only_after_a_whole_idle_period_without_drivers():
    now = [0.0]
    idle = supervisor.IdleClock(10.0, clock=lambda: now[0])

    now[0] = 6.0
    assert not idle.expired(busy=True)  # a run: the clock starts over when it ends
    now[0] = 12.0
    assert not idle.expired(busy=False)
    now[0] = 21.0
    assert not idle.expired(busy=False)
    now[0] = 22.0
    assert idle.expired(busy=False)


def test_a_new_runtime_with_no_driver_yet_is_idle_from_its_start():
    now = [100.0]
    idle = supervisor.IdleClock(5.0, clock=lambda: now[0])
    now[0] = 105.0

    assert idle.expired(busy=False)


def test_live_drivers_counts_running_processes_and_forgets_dead_ones(home):
    runtime.attach()
    drivers = home / "runtime" / "drivers"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (drivers / f"{dead.pid}-{psutil.Process().create_time():.3f}").touch()  # a driver that was SIGKILLed
    (drivers / f"{os.getpid()}-12.000").touch()  # this pid, but another process's start time: pid reused

    assert runtime.live_drivers() == [os.getpid()]
    assert sorted(p.name.split("-")[0] for p in drivers.iterdir()) == [str(os.getpid())]

    runtime.detach()
    assert runtime.live_drivers() == []


def test_a_record_whose_supervisor_is_gone_is_not_a_runtime(home):
    record = home / "runtime" / "runtime.json"
    record.parent.mkdir(parents=True)
    me = psutil.Process()
    fields = dict(
        address="127.0.0.1:1", dashboard="http://127.0.0.1:2", started_at=0.0, idle_stop_s=60.0, shape={}, env={}
    )
    record.write_text(json.dumps({**fields, "supervisor_pid": me.pid, "supervisor_started": me.create_time()}))
    assert runtime.current() is not None

    record.write_text(json.dumps({**fields, "supervisor_pid": me.pid, "supervisor_started": 1.0}))  # pid reused
    assert runtime.current() is None
    assert not record.exists()


def test_the_runtime_is_started_for_this_python_ray_and_the_configured_resources():
    import ray

    def shape(cfg: RayConfig) -> dict:
        return runtime.shape(cfg, local_cluster_spec(cfg).nodes[0])

    wanted = shape(RayConfig(num_cpus=2, resources={"b": 1, "a": 2}))

    assert wanted == {
        "python": sys.executable,
        "ray": ray.__version__,
        "num_cpus": 2,
        "num_gpus": 0,  # none configured: as Ray detects them (this machine has none)
        "resources": {"a": 2, "b": 1},
    }
    assert shape(RayConfig(num_cpus=2, resources={"a": 2, "b": 1})) == wanted  # order does not matter
    assert shape(RayConfig())["num_cpus"] == os.cpu_count()  # unset: all of them, as Ray offers


def test_down_with_no_runtime_says_so(home, capsys):
    from raytrain_orch.cli.main import main

    assert main(["down"]) == 0
    assert capsys.readouterr().out.strip() == "no local runtime is up"


def test_a_run_says_in_one_line_which_local_ray_it_uses():
    def line(**fields):
        return ray_runtime({"event": Event.RAY_RUNTIME, "ts": 0.0, **fields})

    started = line(action="started", address="127.0.0.1:5", note="stops after 15 min idle")
    assert started == (
        "ray: started the local runtime at 127.0.0.1:5; later runs reuse it (stops after 15 min idle; "
        "`rto down` stops it now)"
    )
    assert line(action="reused", address="127.0.0.1:5", note="up 3 min") == (
        "ray: reusing the local runtime at 127.0.0.1:5 (up 3 min)"
    )
    assert line(action="throwaway", address="", note="") == "ray: a throwaway local Ray for this run"
    assert line(action="joined", address="head:6379", note="") is None  # a cluster: nothing to say


def test_the_record_reads_back_as_the_supervisor_wrote_it(tmp_path):
    written = runtime.Runtime(
        address="127.0.0.1:1",
        dashboard="http://127.0.0.1:2",
        supervisor_pid=1,
        supervisor_started=2.0,
        started_at=3.0,
        idle_stop_s=60.0,
        shape={"num_cpus": 2},
        env={"HOME": "abc"},
    )
    written.save(tmp_path / "runtime.json")

    assert runtime.Runtime.load(tmp_path / "runtime.json") == written
    assert not (tmp_path / "runtime.tmp").exists()
