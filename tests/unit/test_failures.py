"""How the Ray backend classifies an attempt's exception: the step's own bug (fails at once) or
the cluster's fault (retried). Ray's and Ray Train's real exception types, no cluster."""

from __future__ import annotations

import ray.exceptions
from ray.train import ControllerError, WorkerGroupError
from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

from raytrain_orch.core.errors import CapacityLostError
from raytrain_orch.core.policy import decide
from raytrain_orch.core.step_config import RetryConfig
from raytrain_orch.ray.backend import RayBackend

describe = RayBackend.describe_failure


def test_a_worker_group_that_could_not_restart_in_time_is_the_clusters_fault_and_retried():
    failure = describe("train", 1, ControllerError(WorkerGroupStartupTimeoutError(num_workers=2)))

    assert failure.kind == "infra"
    assert failure.error_type == "WorkerGroupStartupTimeoutError"
    assert failure.message.startswith("Ray Train: The worker group startup timed out after")
    assert "\n" not in failure.message
    assert decide(failure, RetryConfig(max=2)).retry


def test_a_lost_node_and_the_survivors_broken_collective_are_one_infrastructure_fault():
    survivor = RuntimeError(
        "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Read error [127.0.0.1]:1234: Connection reset by peer"
    )
    error = WorkerGroupError("worker 1 died", {0: survivor, 1: ray.exceptions.ActorDiedError()})

    failure = describe("train", 1, error)

    assert failure.kind == "infra"


def test_a_bug_on_one_rank_is_the_steps_own_error_even_when_a_peer_died_after_it():
    error = WorkerGroupError(
        "rank 0 raised", {0: ValueError("labels out of range"), 1: ray.exceptions.ActorDiedError()}
    )

    failure = describe("train", 1, error)

    assert (failure.kind, failure.error_type, failure.message) == ("user", "ValueError", "labels out of range")


def test_capacity_that_never_came_back_is_final():
    failure = describe(
        "train", 2, CapacityLostError("the cluster lost capacity — step train needs 2 × {CPU: 1} STRICT_SPREAD")
    )

    assert failure.kind == "resources"
    assert not decide(failure, RetryConfig(max=2)).retry


def test_a_worker_group_failure_reads_as_the_error_a_worker_raised():
    from raytrain_orch.ray.controller import _worker_error

    error = WorkerGroupError(
        "[Rank 1]\nTraceback (most recent call last):\n"
        '  File "/tmp/train.py", line 40, in loop\n    loss.backward()\n'
        "RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
        "[127.0.0.1]:36021",
        {1: RuntimeError("Connection closed by peer")},
    )

    assert _worker_error(error).startswith("RuntimeError: [../third_party/gloo")
    assert _worker_error(WorkerGroupError("worker 1 ran out of memory", {})) == "worker 1 ran out of memory"
