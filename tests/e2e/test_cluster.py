"""A real cluster made on this machine: ``ray start --head --num-cpus 2`` on 127.0.0.1 (with
Ray's default token authentication), later joined by a second node (``ray start --address …
--num-cpus 1``). Drivers are real processes: ``ray job submit --working-dir .`` and
``rto run --address``.

One head serves the module (see ``ray_nodes``); the two-node tests come last, since the second
node stays for the rest of the module.
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
from mlflow.tracking import MlflowClient

from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.conftest import REPO, isolated, write_config
from tests.e2e.ray_nodes import BIN, env, gangs, query, ray_cli, ray_node

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A one-node Ray cluster on 127.0.0.1; yields (gcs address, dashboard URL)."""
    with ray_node(tmp_path_factory.mktemp("head"), num_cpus=2) as addresses:
        yield addresses


def _pipeline_runs(tracking_uri: str) -> dict[str, object]:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("digits")
    runs = client.search_runs([experiment.experiment_id])
    return {r.data.tags.get("rto.step", "pipeline"): r for r in runs}


def test_ray_job_submit_runs_the_pipeline_on_the_cluster(head, tmp_path):
    _, dashboard = head
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        dashboard,
        "--working-dir",
        ".",
        "--",
        "python",
        "-m",
        "raytrain_orch",
        "run",
        "configs/digits.yaml",
        "--set",
        f"storage={tmp_path / 'rto-runs'}",
        "--set",
        "storage_options.shared_mount=true",  # the test's nodes share this machine's disk
        "--set",
        f"mlflow.tracking_uri={tracking_uri}",
        "--set",
        "train.params.epochs=10",
    ]
    done = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True, timeout=420)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    submission_id = re.search(r"Job '(raysubmit_\w+)' succeeded", output).group(1)

    status = re.sub(r"\x1b\[[0-9;]*m", "", ray_cli("job", "status", "--address", dashboard, submission_id).stdout)
    assert f"Job '{submission_id}' succeeded" in status
    runs = _pipeline_runs(tracking_uri)
    parent = runs.pop("pipeline")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["rto.ray_job_id"] == submission_id
    assert sorted(runs) == ["evaluate", "prepare", "register", "train"]
    assert all(
        r.data.tags["mlflow.parentRunId"] == parent.info.run_id and r.info.status == "FINISHED" for r in runs.values()
    )
    assert all(r.data.tags["rto.ray_job_id"] == submission_id for r in runs.values())  # the step runs too
    assert parent.data.metrics["test_accuracy"] >= 0.9


# --- gangs, preflight and admission on the cluster ---------------------------------------------

WHOLE_CLUSTER_TRAIN = {"params": {"epochs": 2, "seconds_per_epoch": 0.5}, "scaling": {"num_workers": 2}}


@pytest.fixture(scope="module")
def gcs(head):
    return head[0]


def rto(*args: str, timeout: float = 300, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "rto"), *args], cwd=REPO, env=env(**extra_env), capture_output=True, text=True, timeout=timeout
    )


def start_rto(*args: str, **extra_env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "rto"), *args],
        cwd=REPO,
        env=env(**extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


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


def test_a_gpu_gang_against_a_cpu_only_cluster_fails_before_any_step_starts(gcs, tmp_path):
    done = rto(
        "run", "configs/digits_gpu.yaml", "--address", gcs, *[a for s in isolated(tmp_path) for a in ("--set", s)]
    )

    assert done.returncode == 3, done.stdout + done.stderr
    assert not (tmp_path / "rto-runs").exists()  # the preflight refused it: no PENDING gang, no run
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "rto: error: step train needs 2 × {CPU: 1, GPU: 1} STRICT_PACK; the cluster has no GPU at all"
    )


@pytest.fixture(scope="module")
def two_pipelines(gcs, tmp_path_factory):
    """Two drivers started together, each with a train step that needs the whole cluster for
    longer than an `rto status` takes to start (a warm train step starts in about a second)."""
    dirs = [tmp_path_factory.mktemp(name) for name in ("first", "second")]
    train = {"params": {"epochs": 8, "seconds_per_epoch": 1.0}, "scaling": {"num_workers": 2}}
    drivers = [start_rto("run", str(whole_config(d, train=train)), "--address", gcs) for d in dirs]
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
    for d in dirs:  # as `rto runs` shows them
        listed = json.loads(rto("runs", "--json", "--storage", str(d / "rto-runs"), timeout=60).stdout)
        assert [(r["pipeline"], r["status"]) for r in listed] == [("whole", "SUCCEEDED")]
    spans = sorted((s.steps["train"].metrics["started"], s.steps["train"].metrics["ended"]) for s in states)
    assert spans[1][0] >= spans[0][1]  # one train gang after the other


def test_the_second_train_step_waited_visibly(two_pipelines):
    dirs, _, outputs, status_while_waiting = two_pipelines
    assert status_while_waiting is not None, "no train step was ever seen WAITING"
    assert re.search(r"^train\s+WAITING\s+1/3\s", status_while_waiting, re.M)  # attempt 1 of 3 (retries.max 2)
    assert "train: waiting for resources: 2 × {CPU: 1} PACK; held by whole-" in status_while_waiting
    waits = sorted(float(w) for o in outputs for w in re.findall(r"train      admitted after waiting ([0-9.]+) s", o))
    assert waits and waits[-1] >= 5  # the second train step waited out the whole first one


def test_no_placement_group_or_lease_is_left_after_the_runs(gcs, two_pipelines):
    groups, books = no_gang_left(gcs, timeout_s=20)
    assert groups == []
    assert books["granted"] == [] and books["waiting"] == []


def test_a_killed_driver_leaves_no_placement_group_or_lease(gcs, tmp_path):
    long_train = {"params": {"epochs": 60, "seconds_per_epoch": 1.0}, "scaling": {"num_workers": 2}}
    driver = start_rto("run", str(whole_config(tmp_path, train=long_train)), "--address", gcs, RTO_LEASE_TTL_S="6")
    deadline = time.time() + 180
    for line in driver.stdout:
        if "train      epoch 1/60" in line or time.time() > deadline:
            break
    groups, books = gangs(gcs)
    plan = json.loads(rto("plan", str(whole_config(tmp_path)), "--address", gcs, "--json").stdout)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)

    # While it trained, its lease covered exactly the placement group Ray Train made for its workers.
    assert [r["label"].split("/")[-1] for r in books["granted"]] == ["train"], (
        "training was not running when the driver was killed"
    )
    assert books["granted"][0]["gang"] == "2 × {CPU: 1} PACK"
    (group,) = groups
    assert list(group["bundles"].values()) == [{"CPU": 1.0}, {"CPU": 1.0}] and group["strategy"] == "PACK"
    # ...and a plan made meanwhile said the cluster was busy, not that the gang was infeasible.
    assert {s["name"]: s["admission"] for s in plan["steps"]} == {"first": "must-wait", "train": "must-wait"}

    groups, books = no_gang_left(gcs)
    assert groups == []
    assert books["granted"] == [] and books["waiting"] == []


def test_ctrl_c_releases_the_lease_at_once_and_removes_the_gang(gcs, tmp_path):
    long_train = {"params": {"epochs": 60, "seconds_per_epoch": 1.0}, "scaling": {"num_workers": 2}}
    # A lease that would outlive the test unless released: gone at all means the driver released it.
    driver = start_rto("run", str(whole_config(tmp_path, train=long_train)), "--address", gcs, RTO_LEASE_TTL_S="3600")
    deadline = time.time() + 180
    for line in driver.stdout:
        if "train      epoch 1/60" in line or time.time() > deadline:
            break
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=60) == 130

    groups, books = no_gang_left(gcs)
    assert groups == [] and books["granted"] == [] and books["waiting"] == []
    assert latest_run(tmp_path).steps["train"].status is Status.KILLED


@pytest.fixture(scope="module")
def two_nodes(gcs, tmp_path_factory):
    """The gcs (2 CPUs) and a second node (1 CPU)."""
    with ray_node(tmp_path_factory.mktemp("second"), num_cpus=1, head_address=gcs):
        yield gcs


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
    assert step["reason"].startswith(
        "step probe needs 3 × {CPU: 1} STRICT_SPREAD, one bundle per node; only 2 node(s) can hold one"
    )
    assert run.stderr.strip().splitlines()[-1] == f"rto: error: {step['reason']}"
