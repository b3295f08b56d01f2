"""Gangs on a real cluster made on this machine: ``ray start --head --num-cpus 2``, later joined
by a second node (``ray start --address … --num-cpus 1``). Drivers are real ``rto`` processes.

The two-node tests come last: the second node stays for the rest of the module.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raytrain_orch.state import RunStore, Status
from raytrain_orch.storage import Storage
from tests.conftest import REPO, isolated, write_config
from tests.e2e.ray_nodes import BIN, env, gangs, query, ray_node

pytestmark = pytest.mark.e2e

WHOLE_CLUSTER_TRAIN = {"params": {"epochs": 2, "seconds_per_epoch": 0.5}, "scaling": {"num_workers": 2}}


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    with ray_node(tmp_path_factory.mktemp("head"), num_cpus=2) as (address, _):
        yield address


def rto(*args: str, timeout: float = 300, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "rto"), *args], cwd=REPO, env=env(**extra_env), capture_output=True, text=True, timeout=timeout)


def start_rto(*args: str, **extra_env: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "rto"), *args], cwd=REPO, env=env(**extra_env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def whole_config(directory: Path, **steps) -> Path:
    return write_config(directory, "whole", "tests.pipelines.gangs:whole", {"train": WHOLE_CLUSTER_TRAIN, **steps})


def latest_run(directory: Path):
    return RunStore(Storage(str(directory / "rto-runs"))).latest()


def no_gang_left(address: str, timeout_s: float = 60) -> tuple[list, dict | None]:
    """Wait until the cluster holds no placement group and the queue no lease; return both."""
    deadline = time.time() + timeout_s
    while True:
        groups, books = gangs(address)
        if (not groups and not (books and (books["granted"] or books["waiting"]))) or time.time() > deadline:
            return groups, books
        time.sleep(2)


def test_a_gpu_gang_on_a_cpu_only_machine_fails_in_seconds_naming_the_step_and_gpu(tmp_path):
    started = time.monotonic()
    done = rto("run", "configs/digits_gpu.yaml", *[a for s in isolated(tmp_path) for a in ("--set", s)])
    elapsed = time.monotonic() - started

    assert done.returncode == 3, done.stdout + done.stderr
    assert elapsed < 10
    (line,) = done.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith("rto: error: step train needs 2 × {CPU: 1, GPU: 1} STRICT_PACK; the cluster has no GPU at all")
    assert not (tmp_path / "rto-runs").exists()  # nothing started, nothing recorded


def test_a_gpu_gang_against_a_cpu_only_cluster_fails_in_seconds(head, tmp_path):
    started = time.monotonic()
    done = rto("run", "configs/digits_gpu.yaml", "--address", head, *[a for s in isolated(tmp_path) for a in ("--set", s)])

    assert done.returncode == 3, done.stdout + done.stderr
    assert time.monotonic() - started < 10
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("rto: error: step train needs 2 × {CPU: 1, GPU: 1} STRICT_PACK; the cluster has no GPU at all")


@pytest.fixture(scope="module")
def two_pipelines(head, tmp_path_factory):
    """Two drivers started together, each with a train step that needs the whole cluster."""
    dirs = [tmp_path_factory.mktemp(name) for name in ("first", "second")]
    drivers = [start_rto("run", str(whole_config(d)), "--address", head) for d in dirs]
    status_while_waiting = None
    deadline = time.time() + 240
    while any(p.poll() is None for p in drivers) and time.time() < deadline:
        for d in dirs:
            state = _state_or_none(d)
            if status_while_waiting is None and state and state.steps["train"].status is Status.WAITING:
                shown = rto("status", state.run_id, "--storage", str(d / "rto-runs"), timeout=60).stdout
                status_while_waiting = shown if "WAITING" in shown else None  # else the wait ended meanwhile
        time.sleep(0.5)
    outputs = [p.communicate(timeout=60)[0] for p in drivers]
    return dirs, [p.returncode for p in drivers], outputs, status_while_waiting


def _state_or_none(directory: Path):
    try:
        return latest_run(directory)
    except Exception:  # noqa: BLE001 — not written yet
        return None


def test_two_pipelines_that_each_need_the_whole_cluster_both_succeed(two_pipelines):
    dirs, codes, outputs, _ = two_pipelines
    assert codes == [0, 0], "\n".join(o[-3000:] for o in outputs)
    states = [latest_run(d) for d in dirs]
    assert all(s.status is Status.SUCCEEDED for s in states)
    spans = sorted((s.steps["train"].metrics["started"], s.steps["train"].metrics["ended"]) for s in states)
    assert spans[1][0] >= spans[0][1]  # one train gang after the other


def test_the_second_train_step_waited_visibly(two_pipelines):
    dirs, _, outputs, status_while_waiting = two_pipelines
    assert status_while_waiting is not None, "no train step was ever seen WAITING"
    assert re.search(r"^train\s+WAITING\s+1\s", status_while_waiting, re.M)
    assert "train: waiting for resources: 2 × {CPU: 1} PACK; held by whole-" in status_while_waiting
    waits = sorted(float(w) for o in outputs for w in re.findall(r"train      admitted after waiting ([0-9.]+) s", o))
    assert waits and waits[-1] >= 5  # the second train step waited out the whole first one


def test_no_placement_group_or_lease_is_left_after_the_runs(head, two_pipelines):
    groups, books = no_gang_left(head, timeout_s=20)
    assert groups == []
    assert books["granted"] == [] and books["waiting"] == []


def test_a_killed_driver_leaves_no_placement_group_or_lease(head, tmp_path):
    long_train = {"params": {"epochs": 60, "seconds_per_epoch": 1.0}, "scaling": {"num_workers": 2}}
    driver = start_rto("run", str(whole_config(tmp_path, train=long_train)), "--address", head, RTO_LEASE_TTL_S="6")
    deadline = time.time() + 180
    for line in driver.stdout:
        if "train      epoch 1/60" in line or time.time() > deadline:
            break
    groups, books = gangs(head)
    assert groups and [r["label"].split("/")[-1] for r in books["granted"]] == ["train"], "training was not running when the driver was killed"
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)

    groups, books = no_gang_left(head)
    assert groups == []
    assert books["granted"] == [] and books["waiting"] == []


@pytest.fixture(scope="module")
def two_nodes(head, tmp_path_factory):
    """The head (2 CPUs) and a second node (1 CPU)."""
    with ray_node(tmp_path_factory.mktemp("second"), num_cpus=1, head_address=head):
        yield head


def spread_config(directory: Path, bundles: int) -> Path:
    probe = {"resources": {"CPU": 1}, "bundles": bundles, "placement_strategy": "STRICT_SPREAD"}
    return write_config(directory, "spread", "tests.pipelines.gangs:spread", {"probe": probe})


def test_strict_spread_of_two_places_one_bundle_on_each_node(two_nodes, tmp_path):
    done = rto("run", str(spread_config(tmp_path, 2)), "--address", two_nodes)

    assert done.returncode == 0, done.stdout + done.stderr
    artifact = latest_run(tmp_path).steps["probe"].artifact
    table = pq.read_table(Storage(artifact["storage_uri"]).path(*artifact["path"], "placement.parquet"))
    alive = {n["NodeID"] for n in query(two_nodes, "[n for n in ray.nodes() if n['Alive']]")}
    assert len(alive) == 2
    assert sorted(table["bundle"].to_pylist()) == [0, 1]
    assert set(table["node_id"].to_pylist()) == alive  # one bundle on each node


def test_strict_spread_of_three_on_two_nodes_is_infeasible_and_says_so(two_nodes, tmp_path):
    plan = rto("plan", str(spread_config(tmp_path, 3)), "--address", two_nodes, "--json")
    run = rto("run", str(spread_config(tmp_path, 3)), "--address", two_nodes)

    assert plan.returncode == 3 and run.returncode == 3
    (step,) = json.loads(plan.stdout)["steps"]
    assert step["admission"] == "infeasible"
    assert step["reason"].startswith("step probe needs 3 × {CPU: 1} STRICT_SPREAD, one bundle per node; only 2 node(s) can hold one")
    assert run.stderr.strip().splitlines()[-1] == f"rto: error: {step['reason']}"
