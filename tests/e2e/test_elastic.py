"""Training that bends, on a real two-node cluster on 127.0.0.1: a head (``ray start --head
--num-cpus 2 --resources '{"slot": 1}'``) and second nodes (``--num-cpus 1 --resources
'{"slot": 1}'``) that the tests SIGKILL, add and drain (``ray drain-node``) under a running
``rto run --address``.

- An elastic train step (``num_workers: [1, 2]``, one worker per ``slot``) loses its second node,
  goes on with one worker from its checkpoint, grows back to two when a node joins, and shrinks
  again when that node is drained — a preemption, which spends none of ``max_failures``.
- A task step that sleeps past its ``hang_timeout_s`` and a train step whose rank 1 blocks before
  a collective are found hung, their stacks kept, and retried; a slow step that heartbeats is not.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.conftest import isolated
from tests.e2e.ray_nodes import lose, query, ray_cli, ray_node
from tests.e2e.test_node_loss import Driver, events, helper_nodes, rto, run_id_of

pytestmark = pytest.mark.e2e

EPOCHS = 400  # at most: the test ends training through its stop file once it has seen the drain


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """The head node: its GCS address."""
    with ray_node(tmp_path_factory.mktemp("head"), num_cpus=2, resources={"slot": 1}) as (gcs, _):
        yield gcs


def node(directory, gcs: str, started: list) -> contextlib.AbstractContextManager:
    return ray_node(directory, num_cpus=1, head_address=gcs, resources={"slot": 1}, started=started)


def node_ids(gcs: str) -> set[str]:
    return set(query(gcs, "[n['NodeID'] for n in ray.nodes() if n['Alive']]"))


def epochs_after(driver: Driver, since: float) -> None:
    """Wait for a console line of an epoch trained after ``since`` (the live size is in the events)."""
    driver.wait_for(r"train +epoch \d+/", since=since)


def test_an_elastic_step_shrinks_on_a_lost_node_grows_back_and_a_drain_spends_no_failure(head, tmp_path):
    gcs = head
    started: list[subprocess.Popen] = []
    stop_file = tmp_path / "stop-training"
    with contextlib.ExitStack() as stack:
        stack.enter_context(node(tmp_path / "n2", gcs, started))
        driver = Driver(
            "run", "tests/pipelines/elastic_digits.yaml", "--address", gcs,
            *[a for s in isolated(tmp_path) for a in ("--set", s)],
            "--set", f"train.params.stop_file={stop_file}",
            RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S="1",
        )  # fmt: skip
        run_id = run_id_of(driver)
        driver.wait_for(r"train +2 worker\(s\) \(elastic 1–2\)")
        driver.wait_for(rf"train +epoch 5/{EPOCHS}")

        lose(started[0])  # the second node is lost
        lost = time.time()
        shrunk = driver.wait_for(r"train +workers 2 → 1 \(elastic 1–2\)", timeout_s=120)
        epochs_after(driver, shrunk)
        helpers = helper_nodes(gcs)  # what the driver depends on lives on the head, never on a lost node
        back_at = time.time()

        third = node_ids(gcs)
        stack.enter_context(node(tmp_path / "n3", gcs, started))
        (joined,) = node_ids(gcs) - third
        grown = driver.wait_for(r"train +workers 1 → 2 \(elastic 1–2\)", timeout_s=120)
        epochs_after(driver, grown)

        drained_cmd = ray_cli(
            "drain-node", f"--address={gcs}", f"--node-id={joined}", "--reason=DRAIN_NODE_REASON_PREEMPTION",
            "--reason-message=spot node reclaimed", "--deadline-remaining-seconds=5",
        )  # fmt: skip
        assert drained_cmd.returncode == 0, drained_cmd.stderr
        drained = time.time()
        driver.wait_for(r"WARNING node \S+ is being drained \(a preemption\)", timeout_s=60)
        shrunk_again = driver.wait_for(r"train +workers 2 → 1 \(elastic 1–2\)", timeout_s=120, since=drained)
        epochs_after(driver, shrunk_again)
        stop_file.touch()  # all there was to see: the epoch at hand is the last
        stopped = time.time()
        code = driver.finish(timeout_s=900)

    console = driver.console()
    assert code == 0, console[-4000:]
    assert "Traceback (most recent call last)" not in console
    state = RunStore(Storage(str(tmp_path / "rto-runs"))).load(run_id)
    assert state.status is Status.SUCCEEDED and state.steps["train"].attempts == 1
    (head_id,) = query(
        gcs, "[n['NodeID'] for n in ray.nodes() if n['Alive'] and 'node:__internal_head__' in n['Resources']]"
    )
    assert helpers == {"events": head_id, "admission": head_id}
    assert set(state.driver["helper_nodes"].values()) == {head_id}
    assert state.steps["evaluate"].metrics["test_accuracy"] >= 0.95

    recorded = events(tmp_path, run_id)
    sizes = [e["world_size"] for e in recorded if e["event"] == "workers_resized"]
    assert sizes == [2, 1, 2, 1]
    draining = next(e for e in recorded if e["event"] == "node_draining")
    assert draining["nodes"] == [joined] and draining["ranks"]
    restarts = [e["reason"] for e in recorded if e["event"] == "workers_restarting"]
    assert any("preemption" in reason for reason in restarts), restarts

    # The first epoch the survivors completed on their own, after the loss and after the drain.
    def next_epoch(after: float, size: int) -> float:
        return next(
            e["sent_ts"]
            for e in recorded
            if e["event"] == "epoch" and e["sent_ts"] > after and e["perf"]["world_size"] == size
        )

    epoch_events = [e for e in recorded if e["event"] == "epoch"]
    last = epoch_events[-1]  # the stop file ended training at once, on the one worker left
    assert last["perf"]["world_size"] == 1 and last["epoch"] < EPOCHS - 1
    assert len([e for e in epoch_events if e["sent_ts"] > stopped]) <= 1
    print(
        f"\nelastic: node lost → next epoch on 1 worker {next_epoch(lost, 1) - lost:.1f} s; "
        f"drain → next epoch on 1 worker {next_epoch(drained, 1) - drained:.1f} s; "
        f"node joined → grown {grown - back_at:.1f} s"
    )

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    train_run = client.get_run(state.steps["train"].mlflow_run_id)
    history = [
        int(m.value)
        for m in sorted(client.get_metric_history(train_run.info.run_id, "world_size"), key=lambda m: m.step)
    ]
    assert history[0] == 2 and 1 in history and history[-1] == 1
    assert any(a == 1 and b == 2 for a, b in zip(history, history[1:], strict=False))  # grown back
    assert train_run.data.tags["rto.world_size"] == "1"


def test_hung_steps_are_found_their_stacks_kept_and_retried_and_a_slow_one_is_not(head, tmp_path):
    result = rto(
        "run", "tests/pipelines/hangs.yaml", "--address", head, *[a for s in isolated(tmp_path) for a in ("--set", s)],
        timeout=600,
    )  # fmt: skip
    console = result.stdout + result.stderr
    assert result.returncode == 0, console[-4000:]
    run_id = re.search(r"run (\S+) started", result.stdout).group(1)
    store = RunStore(Storage(str(tmp_path / "rto-runs")))
    state = store.load(run_id)
    assert state.status is Status.SUCCEEDED
    assert state.steps["prepare"].attempts == 2 and state.steps["train"].attempts == 2
    assert state.steps["prepare"].metrics["worked_s"] >= 6  # attempt 2: twice its limit, heartbeating: not hung

    recorded = events(tmp_path, run_id)
    hung = {e["step"]: e for e in recorded if e["event"] == "step_hung"}
    assert set(hung) == {"prepare", "train"} and all(h["attempt"] == 1 for h in hung.values())
    assert hung["prepare"]["limit_s"] == 3 and hung["prepare"]["processes"] == 1
    assert hung["train"]["limit_s"] == 10 and hung["train"]["processes"] == 2  # the floor; both ranks
    for step in ("prepare", "train"):
        retry = next(e for e in recorded if e["event"] == "step_retrying" and e["step"] == step)
        assert retry["kind"] == "infra" and retry["error"].startswith("StepHung: no progress for")
        assert f"{step:<10} HUNG: no progress for" in result.stdout

    # Detected within its limit of the last progress (train: epoch 2's report), and not before.
    last_epoch = max(e["ts"] for e in recorded if e["event"] == "epoch" and e["attempt"] == 1)
    detected_after = hung["train"]["detected_ts"] - last_epoch
    assert 10 <= detected_after <= 10 + 3, detected_after
    resumed = next(e for e in recorded if e["event"] == "restored" and e["attempt"] == 2)
    assert resumed["epoch"] == 2  # from the epoch-2 checkpoint
    assert [e["epoch"] for e in recorded if e["event"] == "epoch" and e["attempt"] == 2] == [3, 4, 5]

    # The run report counts each hung attempt's time from its last progress to its end as hang.
    shown = rto("report", run_id, "--json", "--storage", str(tmp_path / "rto-runs"))
    assert shown.returncode == 0, shown.stderr
    first = {s["name"]: s["rows"][0] for s in json.loads(shown.stdout)["steps"] if s["name"] in hung}
    assert first["train"]["parts"]["hang"] >= detected_after - 0.5, first["train"]["parts"]
    assert first["prepare"]["parts"]["hang"] >= hung["prepare"]["limit_s"] - 0.5, first["prepare"]["parts"]
    for step, row in first.items():
        assert row["outcome"] == "retried" and "hang" in [kind for kind, _, _ in row["marks"]], step
        assert abs(row["unaccounted_s"]) <= 0.02 * row["wall_s"] + 0.05, (step, row["parts"])

    logs = rto("logs", run_id, "--step", "train", "--attempt", "1", "--storage", str(tmp_path / "rto-runs"))
    assert logs.returncode == 0, logs.stderr
    stacks = logs.stdout.split("stacks when it hung", 1)[1]
    rank0, rank1 = stacks.split("--- rank 0:", 1)[1].split("--- rank 1:", 1)
    assert "threading.Event().wait()" not in rank0 and "in train" in rank0  # blocked in the all-reduce
    assert re.search(r'File ".*tests/pipelines/hangs.py", line \d+ in train', rank1)
    blocking_line = next(
        n for n, line in enumerate(open("tests/pipelines/hangs.py"), 1) if "threading.Event().wait()" in line
    )
    assert f'hangs.py", line {blocking_line} in train' in rank1
    prepare_logs = rto("logs", run_id, "--step", "prepare", "--attempt", "1", "--storage", str(tmp_path / "rto-runs"))
    sleeping_line = next(
        n for n, line in enumerate(open("tests/pipelines/hangs.py"), 1) if "time.sleep(params.sleep_s)" in line
    )
    assert f'hangs.py", line {sleeping_line} in prepare' in prepare_logs.stdout
    print(f"\nhang → detected: train {detected_after:.1f} s (limit 10 s)")
