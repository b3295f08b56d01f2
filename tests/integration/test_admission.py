"""Admission and gangs on a real local Ray of 2 CPUs and 2 logical GPUs.

Ray schedules logical GPUs (``ray.init(num_gpus=2)``) like physical ones; the train steps here
ask for them with ``use_gpu: true`` and train with gloo on the CPU.
"""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
import ray
from ray._raylet import GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, GCS_AUTOSCALER_STATE_NAMESPACE
from ray.core.generated import autoscaler_pb2
from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from raytrain_orch.cli.wiring import execute
from raytrain_orch.core.config import RayConfig
from raytrain_orch.core.errors import InfeasibleError, PipelineFailedError
from raytrain_orch.core.placement import GangSpec, NodeType
from raytrain_orch.engine.driver import preflight, prepare
from raytrain_orch.ray import gangs, leases, session
from raytrain_orch.ray.backend import RayBackend
from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.conftest import write_config

pytestmark = pytest.mark.integration

WHOLE_CLUSTER_OF_GPU_WORKERS = {
    "params": {"epochs": 1},
    "scaling": {"num_workers": 2, "use_gpu": True, "torch_backend": "gloo"},
}


@pytest.fixture(scope="module")
def local_ray():
    session.connect(RayConfig(num_cpus=2, num_gpus=2))
    yield
    session.disconnect()


def our_groups_alive() -> list[dict]:
    return [
        g for g in ray.util.placement_group_table().values() if g["state"] in ("CREATED", "PENDING", "RESCHEDULING")
    ]


def run(tmp_path, name: str, pipeline: str, steps: dict, **top):
    prepared = prepare(write_config(tmp_path, name, f"tests.pipelines.gangs:{pipeline}", steps, **top))
    events: list[dict] = []
    try:
        state = execute(prepared, on_event=events.append)
    except PipelineFailedError:
        state = RunStore(Storage(prepared.config.storage)).latest()
    return state, events


@pytest.fixture(scope="module")
def three(local_ray, tmp_path_factory):
    """Three DDP train steps, each of 2 GPU workers — each the whole cluster — started at once."""
    steps = {f"train{i}": WHOLE_CLUSTER_OF_GPU_WORKERS for i in range(3)}
    return run(tmp_path_factory.mktemp("three"), "three", "three", steps)


def test_three_whole_cluster_train_gangs_all_finish(three):
    state, _ = three
    assert state.status is Status.SUCCEEDED
    assert [s.attempts for s in state.steps.values()] == [1] * 3  # none timed out, none retried
    assert all(s.metrics["world"] == 2.0 for s in state.steps.values())  # both ranks took part each time


def test_the_gangs_ran_one_after_another_never_overlapping(three):
    state, _ = three
    spans = sorted((s.metrics["started"], s.metrics["ended"]) for s in state.steps.values())
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))


def test_two_gangs_waited_in_the_queue_and_said_why(three):
    state, events = three
    waited = {e["step"] for e in events if e["event"] == "step_waiting"}
    assert len(waited) == 2
    first = next(e for e in events if e["event"] == "step_waiting")
    assert first["reason"].startswith("waiting for resources: 2 × {CPU: 1, GPU: 1} PACK; ")
    assert f"held by {state.run_id}/train" in first["reason"]
    assert all(e["event"] != "step_waiting" or e["position"] >= 1 for e in events)


def test_each_gpu_worker_got_its_own_logical_gpu(three):
    state, _ = three
    assert {s.metrics["gpu_bits"] for s in state.steps.values()} == {2.0**0 + 2.0**1}


def test_nothing_is_left_reserved_after_the_gangs(three):
    assert our_groups_alive() == []
    books = leases.admission_snapshot()
    assert books["granted"] == [] and books["waiting"] == []


def test_a_task_gang_on_a_logical_gpu_sees_its_gpu(local_ray, tmp_path):
    state, _ = run(tmp_path, "gpus", "gpus", {"gpu_task": {"resources": {"CPU": 0.5, "GPU": 1}}})

    assert state.status is Status.SUCCEEDED
    assert state.steps["gpu_task"].metrics["gpus_seen"] == 1.0
    assert state.steps["gpu_task"].metrics["gpu_id"] in (0.0, 1.0)


def test_a_failed_step_leaves_no_placement_group(local_ray, tmp_path):
    state, _ = run(tmp_path, "failing", "failing", {"broken": {"retries": {"max": 0}}})

    assert state.steps["broken"].status is Status.FAILED
    assert our_groups_alive() == []


def test_waiting_past_the_admission_timeout_fails_the_step_once_with_the_reason(local_ray, tmp_path):
    granted, release = threading.Event(), threading.Event()

    def hold_the_gpus() -> None:
        with leases.Leases().admitted(GangSpec(({"GPU": 1.0},) * 2), "test/holder"):
            granted.set()
            release.wait(60)

    holder = threading.Thread(target=hold_the_gpus, daemon=True)
    holder.start()
    assert granted.wait(30)
    try:
        state, events = run(
            tmp_path, "gpus", "gpus", {"gpu_task": {"resources": {"GPU": 1}}}, admission={"timeout_s": 2}
        )
    finally:
        release.set()
        holder.join(30)

    step = state.steps["gpu_task"]
    assert step.status is Status.FAILED and step.attempts == 1  # waiting longer cannot help: not retried
    assert step.error.startswith("AdmissionTimeoutError: ")
    assert (
        "waited 2 s for 1 × {GPU: 1} PACK (admission.timeout_s)" in step.error and "held by test/holder" in step.error
    )
    assert [e["reason"] for e in events if e["event"] == "step_waiting"][0].endswith("held by test/holder")
    assert leases.admission_snapshot()["granted"] == []


def test_preflight_counts_gpu_nodes_the_autoscaler_can_add(local_ray):
    plan = prepare("configs/digits_gpu.yaml", ["train.scaling.num_workers=4"]).plan
    with pytest.raises(
        InfeasibleError,
        match=r"step train needs 4 × {CPU: 1, GPU: 1} STRICT_PACK \(4 CPU in total\); the cluster has 2 CPU",
    ):
        preflight(plan, session.cluster_spec())

    # What an autoscaler publishes in the GCS: node types and how many of each it may launch.
    config = autoscaler_pb2.ClusterConfig()
    gpu_node = config.node_group_configs.add()
    gpu_node.name, gpu_node.max_count = "gpu-worker", 3
    gpu_node.resources.update({"CPU": 8, "GPU": 4})
    _internal_kv_put(
        GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, config.SerializeToString(), namespace=GCS_AUTOSCALER_STATE_NAMESPACE
    )
    try:
        cluster = session.cluster_spec()
        assert cluster.node_types == (NodeType({"CPU": 8.0, "GPU": 4.0}, max_more=3),)
        preflight(plan, cluster)  # feasible: the autoscaler can add a node with 4 GPUs
    finally:
        _internal_kv_del(GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, namespace=GCS_AUTOSCALER_STATE_NAMESPACE)


def test_the_queue_created_from_inside_a_gang_outlives_that_gang(local_ray):
    ray.kill(leases.admission(), no_restart=True)  # the next caller creates it afresh
    with gangs.reserved(GangSpec(({"CPU": 0.5},)), "test/capturing") as group:
        strategy = PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)
        first = ray.get(_first_caller.options(num_cpus=0.5, scheduling_strategy=strategy).remote(), timeout=60)
    # The gang is gone; the queue is the same actor, not a restarted one, and still answers.
    handle = leases.admission()
    assert (
        ray.get(handle.__ray_call__.remote(lambda self: ray.get_runtime_context().get_actor_id()), timeout=30) == first
    )
    assert leases.admission_snapshot()["granted"] == []


@ray.remote
def _first_caller() -> str:
    handle = leases.admission()  # created here, by a task in a gang that captures its children
    with leases.Leases().admitted(GangSpec(({"CPU": 0.1},)), "test/inside"):
        pass
    return ray.get(handle.__ray_call__.remote(lambda self: ray.get_runtime_context().get_actor_id()))


# --- helpers the driver depends on, when they are lost ---------------------------------------------


def test_a_restarted_admission_queue_learns_the_running_lease_back_from_its_holder(local_ray):
    whole = GangSpec(({"CPU": 2.0},), "PACK")
    with leases.Leases().admitted(whole, "restart-run/holder", ttl_s=3.0):
        ray.kill(leases.admission(), no_restart=False)  # its process dies; Ray restarts it, empty, on the head
        deadline, granted = time.time() + 30, []
        while time.time() < deadline and granted != ["restart-run/holder"]:
            time.sleep(0.5)
            with contextlib.suppress(ray.exceptions.RayActorError):
                granted = [r["label"] for r in leases.admission_snapshot()["granted"]]
        # The lease is booked again, so a second whole-cluster gang waits instead of being granted the same CPUs.
        verdict = ray.get(
            leases.admission().wait.remote(
                "restart-run/second", [{"CPU": 2.0}], "PACK", "restart-run/second", 0, 3.0, 0.0
            )
        )
        leases.release("restart-run/second")

    assert granted == ["restart-run/holder"]
    assert verdict["state"] == "waiting" and "held by restart-run/holder" in verdict["reason"]
    assert leases.admission_snapshot()["granted"] == []  # released on exit, by the restarted queue


def test_a_lost_progress_channel_is_replaced_and_the_driver_reads_the_new_one(local_ray):
    backend = RayBackend()
    here = ray.get_runtime_context().get_node_id()
    try:
        assert backend.helper_nodes() == {"events": here, "admission": here}  # the driver's node; here also the head
        ray.kill(backend._events.actor, no_restart=True)  # gone for good
        drained: list[dict] = []
        deadline = time.time() + 30
        while time.time() < deadline and not any(e["event"] == "progress_channel_lost" for e in drained):
            drained += backend.drain_events()
            time.sleep(0.2)
        backend._events.put_nowait({"event": "epoch", "step": "train", "epoch": 0})  # what a new attempt's worker sends

        assert [e["event"] for e in drained] == ["progress_channel_lost"]
        assert backend.drain_events() == [{"event": "epoch", "step": "train", "epoch": 0}]
        assert backend.helper_nodes()["events"] == here
    finally:
        backend.close()
