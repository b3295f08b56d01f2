"""A node lost under a running pipeline, on a real two-node cluster on 127.0.0.1: a head
(``ray start --head --num-cpus 1``, token authentication on) and a second node (``ray start
--address … --num-cpus 1 --resources '{"spare": 1}'``) that the tests lose: its raylet and
every process under it SIGKILLed at once, as a machine that goes away.

The driver is ``rto run --address`` as a user runs it, without ``RAY_AUTH_MODE``: it finds the
token by itself. The train step is the digits pipeline's, 2 workers STRICT_SPREAD, so one
worker runs on each node and losing the second node breaks the DDP group. (An elastic step that
loses a node, gets one back and has one drained: tests/e2e/test_elastic.py.)
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.conftest import REPO, isolated
from tests.e2e.ray_nodes import BIN, env, lose, query, ray_node

pytestmark = pytest.mark.e2e

EPOCHS = 60
TRAIN = [
    "--set",
    "train.scaling.placement_strategy=STRICT_SPREAD",
    "--set",
    f"train.params.epochs={EPOCHS}",
    "--set",
    "train.params.hidden=2048",
    "--set",
    "train.params.batch_size=16",
]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """The head node: (GCS address, its node id)."""
    with ray_node(tmp_path_factory.mktemp("head"), num_cpus=1) as (gcs, _):
        (head_id,) = query(
            gcs, "[n['NodeID'] for n in ray.nodes() if n['Alive'] and 'node:__internal_head__' in n['Resources']]"
        )
        yield gcs, head_id


def user_env(**extra: str) -> dict[str, str]:
    """A user's shell: the token where Ray looks for it, but no RAY_AUTH_MODE."""
    environment = env(**extra)
    environment.pop("RAY_AUTH_MODE")
    return environment


def rto(*args: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "rto"), *args], cwd=REPO, env=user_env(**extra), capture_output=True, text=True, timeout=timeout
    )


class Driver:
    """``rto run`` in the background, its console kept line by line with when each line came."""

    def __init__(self, *args: str, **extra: str):
        self.process = subprocess.Popen(
            [str(BIN / "rto"), *args],
            cwd=REPO,
            env=user_env(PYTHONUNBUFFERED="1", **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self.errors: list[tuple[float, str]] = []
        self._threads = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.errors), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _read(stream, into: list) -> None:
        for line in stream:
            into.append((time.time(), line.rstrip("\n")))

    def wait_for(self, pattern: str, timeout_s: float = 240, since: float = 0.0) -> float:
        """When a console line matching ``pattern`` came (the first after ``since``)."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            for at, line in list(self.lines):
                if at > since and re.search(pattern, line):
                    return at
            if self.process.poll() is not None and not any(t.is_alive() for t in self._threads):
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r}:\n{self.console()[-4000:]}")

    def finish(self, timeout_s: float = 420) -> int:
        code = self.process.wait(timeout=timeout_s)
        for thread in self._threads:
            thread.join(timeout=10)
        return code

    def console(self) -> str:
        return "\n".join(line for _, line in self.lines) + "\n" + "\n".join(line for _, line in self.errors)


def helper_nodes(gcs: str) -> dict[str, str]:
    """The node of each live actor a driver depends on, as the cluster's state API sees it."""
    rows = query(
        gcs,
        "[(a.class_name, a.node_id) for a in __import__('ray.util.state', fromlist=['x'])"
        ".list_actors(address=ray.get_runtime_context().gcs_address, filters=[('state', '=', 'ALIVE')])]",
    )
    names = {"_ProgressChannel": "events", "AdmissionActor": "admission"}
    return {names[cls]: node for cls, node in rows if cls in names}


def events(directory: Path, run_id: str) -> list[dict]:
    store = RunStore(Storage(str(directory / "rto-runs")))
    return [
        json.loads(line)
        for line in store.storage.read_bytes(*store.run_path(run_id, "events.jsonl")).decode().splitlines()
    ]


def mlflow_runs(directory: Path) -> dict[str, list]:
    client = MlflowClient(f"sqlite:///{directory / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("digits")
    found: dict[str, list] = {}
    for run in client.search_runs([experiment.experiment_id]):
        found.setdefault(run.data.tags.get("rto.step", "pipeline"), []).append(run)
    return found


def second_node(directory: Path, gcs: str, started: list) -> contextlib.AbstractContextManager:
    return ray_node(directory, num_cpus=1, head_address=gcs, resources={"spare": 1}, started=started)


def run_id_of(driver: Driver) -> str:
    driver.wait_for(r"run \S+ started")
    return next(found.group(1) for _, line in driver.lines if (found := re.search(r"run (\S+) started", line)))


# --- authentication ----------------------------------------------------------------------------


def test_rto_plan_joins_a_token_cluster_without_ray_auth_mode_and_a_wrong_token_is_one_line(head, tmp_path):
    gcs, _ = head
    plan = rto(
        "plan",
        "configs/digits.yaml",
        "--address",
        gcs,
        "--json",
        *[a for s in isolated(tmp_path) for a in ("--set", s)],
    )
    refused = rto(
        "run",
        "configs/digits.yaml",
        "--address",
        gcs,
        *[a for s in isolated(tmp_path) for a in ("--set", s)],
        RAY_AUTH_TOKEN="not-the-token",
    )

    # It joined and judged the cluster: the head alone (1 CPU) takes prepare now but never the 2-worker gang.
    assert plan.returncode == 3, plan.stderr
    admission = {s["name"]: s["admission"] for s in json.loads(plan.stdout)["steps"]}
    assert admission["prepare"] == "feasible" and admission["train"] == "infeasible"
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()  # one line: no InvalidAuthToken warnings, no traceback
    assert line == (
        f"rto: error: the Ray cluster at {gcs} refused the token from RAY_AUTH_TOKEN; copy the head's token "
        "(run `ray get-auth-token` on the head) into RAY_AUTH_TOKEN or ~/.ray/auth_token"
    )
    assert not (tmp_path / "rto-runs").exists()  # nothing started


# --- a lost node --------------------------------------------------------------------------------


def test_without_a_replacement_the_step_waits_then_fails_in_one_line_and_resume_finishes_it(head, tmp_path):
    gcs, head_id = head
    nodes: list[subprocess.Popen] = []
    storage = str(tmp_path / "rto-runs")
    with second_node(tmp_path / "second", gcs, nodes):
        driver = Driver(
            "run",
            "configs/digits.yaml",
            "--address",
            gcs,
            *TRAIN,
            "--set",
            "admission.timeout_s=30",
            *[a for s in isolated(tmp_path) for a in ("--set", s)],
            RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="15",
            RTO_TRAIN_START_RETRIES="0",  # Ray Train gives the group back sooner
        )
        run_id = run_id_of(driver)
        driver.wait_for(rf"train +epoch 1/{EPOCHS}")
        helpers = helper_nodes(gcs)  # asked before the loss: the query takes seconds, training goes on
        driver.wait_for(rf"train +epoch ([5-9]|\d\d)/{EPOCHS}")
        lose(nodes[0])
    driver.wait_for(r"train +waiting for nodes", timeout_s=180)
    status = rto("status", run_id, "--storage", storage, timeout=60).stdout
    code = driver.finish()

    console = driver.console()
    assert code == 1, console[-4000:]
    assert helpers == {"events": head_id, "admission": head_id}
    assert "Traceback (most recent call last)" not in console
    missing = (
        "the cluster lost capacity — step train needs 2 × {CPU: 1} STRICT_SPREAD (2 CPU in total); "
        "the cluster has 1 CPU"
    )
    assert re.search(r"^train\s+WAITING\s", status, re.M) and missing in status  # `rto status` says why
    last = driver.errors[-1][1]
    assert last == (
        f"rto: error: run {run_id} failed at step(s) train — train: CapacityLostError: {missing}; no node joined "
        f"within 30 s (admission.timeout_s) — add nodes that can hold it, then `rto resume {run_id}`"
    )
    state = RunStore(Storage(storage)).load(run_id)
    assert state.status is Status.FAILED and state.steps["train"].status is Status.FAILED
    runs = mlflow_runs(tmp_path)
    assert runs["pipeline"][0].info.status == "FAILED"
    assert sorted(r.info.status for r in runs["train"]) == [
        "FAILED",
        "FAILED",
    ]  # attempt 1 (Ray Train gave up), attempt 2 (waited)
    before = max(e["epoch"] for e in events(tmp_path, run_id) if e["event"] == "epoch")

    with second_node(tmp_path / "joined", gcs, nodes):
        resumed = rto("resume", run_id, "--storage", storage, "--address", gcs, timeout=420)

    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    state = RunStore(Storage(storage)).load(run_id)
    assert state.status is Status.SUCCEEDED and state.steps["prepare"].status is Status.SUCCEEDED  # kept, not rerun
    restored = [e["epoch"] for e in events(tmp_path, run_id) if e["event"] == "restored"][-1]
    assert before - 1 <= restored <= before  # from the checkpoint the lost node's run left
    assert mlflow_runs(tmp_path)["pipeline"][0].info.status == "FINISHED"
