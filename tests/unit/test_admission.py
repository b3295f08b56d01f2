"""The admission queue's ordering and accounting, without Ray."""

from __future__ import annotations

from raytrain_orch.core.admission import AdmissionQueue
from raytrain_orch.core.placement import ClusterSpec, GangSpec, NodeType

TWO_CPUS = ClusterSpec(nodes=({"CPU": 2.0},))


def gang(n: int, cpus: float = 1.0, strategy: str = "PACK", **extra: float) -> GangSpec:
    return GangSpec(tuple({"CPU": cpus, **extra} for _ in range(n)), strategy)


def submit(queue: AdmissionQueue, ticket: str, g: GangSpec, now: float = 0.0, **kw) -> None:
    queue.submit(ticket, g, label=ticket, now=now, **kw)


def granted(queue: AdmissionQueue) -> list[str]:
    return [r.ticket for r in queue.granted()]


def test_gangs_that_fit_together_are_granted_together():
    queue = AdmissionQueue()
    submit(queue, "a", gang(1))
    submit(queue, "b", gang(1))

    queue.schedule(TWO_CPUS, now=1.0)

    assert granted(queue) == ["a", "b"]


def test_a_gang_that_does_not_fit_now_waits_until_the_holder_releases():
    queue = AdmissionQueue()
    for ticket in ("a", "b", "c"):
        submit(queue, ticket, gang(2))

    queue.schedule(TWO_CPUS, now=1.0)
    assert granted(queue) == ["a"]
    assert queue.verdict("c", TWO_CPUS).position == 2

    queue.release("a")
    queue.schedule(TWO_CPUS, now=2.0)
    assert granted(queue) == ["b"]
    assert queue.verdict("c", TWO_CPUS).position == 1


def test_a_resumed_run_drops_the_leases_its_dead_driver_left_and_only_those():
    queue = AdmissionQueue()
    queue.submit("t1", gang(2), label="run-a/train", now=0.0)  # held by run-a's killed driver
    queue.submit("t2", gang(1), label="run-a/sweep/trial_1", now=0.0)
    queue.submit("t3", gang(2), label="run-ab/train", now=0.0)  # another run whose id starts alike
    queue.schedule(TWO_CPUS, now=1.0)
    assert granted(queue) == ["t1"]

    dropped = queue.release_run("run-a")
    queue.schedule(TWO_CPUS, now=2.0)

    assert sorted(r.ticket for r in dropped) == ["t1", "t2"]
    assert granted(queue) == ["t3"]  # granted at once, not after the dead leases' TTL


def test_six_whole_cluster_gangs_are_granted_one_after_another_in_arrival_order():
    queue = AdmissionQueue()
    order = [f"t{i}" for i in range(6)]
    for i, ticket in enumerate(order):
        submit(queue, ticket, gang(2), now=float(i))
    seen = []
    for step in range(6):
        queue.schedule(TWO_CPUS, now=10.0 + step)
        (holder,) = granted(queue)
        seen.append(holder)
        queue.release(holder)

    assert seen == order
    assert not queue.requests


def test_higher_priority_goes_first_then_arrival_order():
    queue = AdmissionQueue()
    submit(queue, "holder", gang(2))
    queue.schedule(TWO_CPUS, now=0.0)
    submit(queue, "low-early", gang(2), now=1.0)
    submit(queue, "high", gang(2), now=2.0, priority=5)
    submit(queue, "low-late", gang(2), now=3.0)

    assert [r.ticket for r in queue.waiting()] == ["high", "low-early", "low-late"]
    queue.release("holder")
    queue.schedule(TWO_CPUS, now=4.0)
    assert granted(queue) == ["high"]


def test_the_head_of_the_queue_blocks_smaller_gangs_behind_it():
    queue = AdmissionQueue()
    submit(queue, "half", gang(1))
    queue.schedule(TWO_CPUS, now=0.0)
    submit(queue, "whole", gang(2), now=1.0)
    submit(queue, "small", gang(1), now=2.0)

    queue.schedule(TWO_CPUS, now=3.0)

    # "small" would fit beside "half", but would then starve "whole" for as long as small gangs keep coming.
    assert granted(queue) == ["half"]
    verdict = queue.verdict("small", TWO_CPUS)
    assert verdict.state == "waiting" and verdict.position == 2
    assert verdict.reason == "waiting for resources: 1 × {CPU: 1} PACK; 1 gang(s) ahead in the queue; held by half"


def test_accounting_is_per_node_not_only_in_total():
    two_nodes = ClusterSpec(nodes=({"CPU": 2.0}, {"CPU": 2.0}))
    queue = AdmissionQueue()
    submit(queue, "one", gang(1))
    submit(queue, "packed", gang(2, strategy="STRICT_PACK"))
    submit(queue, "packed-too", gang(2, strategy="STRICT_PACK"))

    queue.schedule(two_nodes, now=0.0)

    # 3 CPUs are free in total, but no node has 2 left once "one" and "packed" are placed.
    assert granted(queue) == ["one", "packed"]
    assert sorted(n["CPU"] for n in queue.free(two_nodes)) == [0.0, 1.0]


def test_a_gang_the_cluster_lost_the_capacity_for_waits_saying_what_is_missing_without_blocking_the_queue():
    queue = AdmissionQueue()
    submit(queue, "run/gpu", gang(2, GPU=1.0))
    submit(queue, "run/cpu", gang(1))

    queue.schedule(TWO_CPUS, now=0.0)

    verdict = queue.verdict("run/gpu", TWO_CPUS)
    assert verdict.state == "waiting" and verdict.lacking
    assert verdict.reason.startswith(
        "waiting for nodes: the cluster lost capacity — step gpu needs 2 × {CPU: 1, GPU: 1} PACK"
    )
    assert "the cluster has no GPU at all" in verdict.reason
    assert granted(queue) == ["run/cpu"]  # the gang behind it was not held up


def test_a_gang_waiting_for_lost_nodes_is_granted_when_they_join():
    one_node = ClusterSpec(nodes=({"CPU": 2.0},))
    two_nodes = ClusterSpec(nodes=({"CPU": 1.0}, {"CPU": 1.0}))
    queue = AdmissionQueue()
    submit(queue, "run/train", gang(2, strategy="STRICT_SPREAD"))

    queue.schedule(one_node, now=0.0)
    lacking = queue.verdict("run/train", one_node)
    queue.schedule(two_nodes, now=1.0)

    assert lacking.lacking and "one bundle per node; only 1 node(s) can hold one" in lacking.reason
    assert queue.verdict("run/train", two_nodes).state == "granted"


def test_a_queue_that_restarted_empty_learns_its_grants_back_from_their_holders():
    queue = AdmissionQueue()
    submit(queue, "run1/train", gang(2))
    queue.schedule(TWO_CPUS, now=0.0)

    restarted = AdmissionQueue()  # Ray restarted the actor: nothing in its books
    unknown = restarted.touch(["run1/train"], now=1.0)
    for ticket in unknown:
        restarted.reclaim(ticket, gang(2), label=ticket, now=1.0)
    submit(restarted, "run2/train", gang(2), now=2.0)
    restarted.schedule(TWO_CPUS, now=2.0)

    assert unknown == ["run1/train"]
    assert granted(restarted) == ["run1/train"]
    assert restarted.verdict("run2/train", TWO_CPUS).position == 1  # the running gang is counted again
    assert restarted.touch(["run1/train"], now=3.0) == []


def test_requests_of_a_dead_holder_expire_and_free_their_resources():
    queue = AdmissionQueue()
    submit(queue, "dead", gang(2), ttl_s=5.0)
    submit(queue, "alive", gang(2), ttl_s=5.0)
    queue.schedule(TWO_CPUS, now=0.0)

    queue.touch(["alive"], now=4.0)
    assert queue.expire(now=6.0)[0].ticket == "dead"
    queue.schedule(TWO_CPUS, now=6.0)

    assert granted(queue) == ["alive"]
    assert queue.verdict("dead", TWO_CPUS).state == "unknown"


def test_submitting_again_keeps_the_place_in_the_queue():
    queue = AdmissionQueue()
    submit(queue, "holder", gang(2))
    queue.schedule(TWO_CPUS, now=0.0)
    submit(queue, "first", gang(2), now=1.0)
    submit(queue, "second", gang(2), now=2.0)
    submit(queue, "first", gang(2), now=3.0)

    assert [r.ticket for r in queue.waiting()] == ["first", "second"]
    assert queue.requests["first"].seen_at == 3.0


def test_nodes_an_autoscaler_can_add_are_granted_against():
    growable = ClusterSpec(nodes=({"CPU": 2.0},), node_types=(NodeType({"CPU": 4.0, "GPU": 1.0}, max_more=2),))
    queue = AdmissionQueue()
    for ticket in ("g1", "g2", "g3"):
        submit(queue, ticket, gang(1, GPU=1.0))

    queue.schedule(growable, now=0.0)

    assert granted(queue) == ["g1", "g2"]  # two GPU nodes can be added; the third gang waits
    assert queue.verdict("g3", growable).state == "waiting"


def test_snapshot_lists_holders_and_waiters_for_people():
    queue = AdmissionQueue()
    submit(queue, "run1/train", gang(2), now=0.0)
    submit(queue, "run2/train", gang(2), now=1.0)
    queue.schedule(TWO_CPUS, now=2.0)

    snap = queue.snapshot(TWO_CPUS, now=5.0)

    assert [r["label"] for r in snap["granted"]] == ["run1/train"]
    assert snap["waiting"] == [
        {
            "ticket": "run2/train",
            "label": "run2/train",
            "queue": "default",
            "gang": "2 × {CPU: 1} PACK",
            "resources": {"CPU": 2.0},
            "priority": 0,
            "preemptible": False,
            "age_s": 4.0,
            "position": 1,
            "why": "waiting for resources: 2 × {CPU: 1} PACK; held by run1/train",
        }
    ]
    assert snap["free"] == [{"CPU": 0.0}]
