"""Where gangs fit: whether a gang can ever be placed on a cluster, where it goes on what is
free, and how many copies (a sweep's trials) fit at once."""

from __future__ import annotations

import time

import pytest

from raytrain_orch.core.placement import ClusterSpec, GangSpec, NodeType, check_gang, max_concurrent_trials, place
from raytrain_orch.core.sweep_config import SweepConfig


def cluster(*nodes: dict) -> ClusterSpec:
    return ClusterSpec(nodes=tuple({k: float(v) for k, v in n.items()} for n in nodes))


# --- feasibility ------------------------------------------------------------------------------


def test_gpus_on_a_cpu_only_cluster_are_infeasible():
    verdict = check_gang("train", GangSpec(({"CPU": 1.0, "GPU": 1.0},) * 2, "PACK"), cluster({"CPU": 8}, {"CPU": 8}))

    assert not verdict.feasible
    assert verdict.reason.startswith("step train needs 2 × {CPU: 1, GPU: 1} PACK;")
    assert "the cluster has no GPU at all" in verdict.reason


def test_strict_pack_larger_than_the_largest_node_is_infeasible_though_the_total_fits():
    gang = GangSpec(({"CPU": 1.0},) * 3, "STRICT_PACK")

    verdict = check_gang("train", gang, cluster({"CPU": 2}, {"CPU": 2}))

    assert not verdict.feasible
    assert verdict.reason == "step train needs 3 × {CPU: 1} STRICT_PACK on one node; the largest node has {CPU: 2}"


def test_pack_across_two_nodes_that_fits_is_feasible():
    gang = GangSpec(({"CPU": 1.0},) * 3, "PACK")

    assert check_gang("train", gang, cluster({"CPU": 2}, {"CPU": 2})).feasible


def test_spread_across_nodes_that_fits_is_feasible():
    gang = GangSpec(({"CPU": 1.0},) * 4, "SPREAD")

    assert check_gang("train", gang, cluster({"CPU": 2}, {"CPU": 2})).feasible


def test_total_above_capacity_is_infeasible():
    gang = GangSpec(({"CPU": 1.0},) * 5, "PACK")

    verdict = check_gang("train", gang, cluster({"CPU": 2}, {"CPU": 2}))

    assert not verdict.feasible
    assert verdict.reason == "step train needs 5 × {CPU: 1} PACK (5 CPU in total); the cluster has 4 CPU"


def test_bundles_that_fit_in_total_but_on_no_node_are_infeasible():
    # 3 CPUs in total, but no node holds 1.5 CPUs twice.
    gang = GangSpec(({"CPU": 1.5},) * 2, "PACK")

    verdict = check_gang("train", gang, cluster({"CPU": 2}, {"CPU": 1}))

    assert not verdict.feasible
    assert "its bundles do not fit on the nodes of the cluster" in verdict.reason


def test_strict_spread_needing_more_nodes_than_exist_is_infeasible():
    gang = GangSpec(({"CPU": 1.0},) * 3, "STRICT_SPREAD")

    verdict = check_gang("train", gang, cluster({"CPU": 4}, {"CPU": 4}))

    assert not verdict.feasible
    assert verdict.reason.startswith(
        "step train needs 3 × {CPU: 1} STRICT_SPREAD, one bundle per node; only 2 node(s) can hold one"
    )


def test_strict_spread_with_one_bundle_per_node_is_feasible():
    gang = GangSpec(({"CPU": 1.0},) * 2, "STRICT_SPREAD")

    assert check_gang("train", gang, cluster({"CPU": 1}, {"CPU": 1})).feasible


def test_custom_resources_are_checked_per_node():
    gang = GangSpec(({"CPU": 1.0, "TPU": 1.0},) * 2, "PACK")

    absent = check_gang("train", gang, cluster({"CPU": 4}))
    too_few = check_gang("train", gang, cluster({"CPU": 4, "TPU": 1}, {"CPU": 4}))
    enough = check_gang("train", gang, cluster({"CPU": 4}, {"CPU": 4, "TPU": 4}))

    assert "the cluster has no TPU at all" in absent.reason
    assert too_few.reason.endswith("(2 TPU in total); the cluster has 1 TPU")
    assert enough.feasible


def test_resources_placed_on_one_node_are_not_reused_for_the_next_bundle():
    gang = GangSpec(({"CPU": 1.0, "GPU": 1.0},) * 2, "PACK")

    verdict = check_gang("train", gang, cluster({"CPU": 4, "GPU": 1}, {"CPU": 4, "GPU": 0.5}, {"CPU": 0.5, "GPU": 1}))

    assert not verdict.feasible
    assert "its bundles do not fit on the nodes of the cluster" in verdict.reason


def test_strict_pack_on_a_cluster_with_no_nodes_is_a_verdict_not_a_crash():
    verdict = check_gang("noop", GangSpec(({"CPU": 0.0},), "STRICT_PACK"), ClusterSpec())

    assert not verdict.feasible
    assert verdict.reason == "step noop needs 1 × {CPU: 0} STRICT_PACK on one node; the largest node has {CPU: 0}"


def test_a_fit_that_first_fit_misses_is_found():
    # First fit puts {CPU: 2} on the GPU node and leaves the GPU bundle nowhere to go.
    gang = GangSpec(({"CPU": 2.0}, {"CPU": 1.0, "GPU": 1.0}), "PACK")
    nodes = ({"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0})

    assert place(gang, nodes) == [1, 0]
    assert check_gang("train", gang, ClusterSpec(nodes)).feasible


def test_strict_spread_places_each_bundle_on_its_own_node():
    gang = GangSpec(({"CPU": 1.0},) * 3, "STRICT_SPREAD")

    assert sorted(place(gang, ({"CPU": 4.0}, {"CPU": 1.0}, {"CPU": 1.0}))) == [0, 1, 2]
    assert place(gang, ({"CPU": 4.0}, {"CPU": 4.0})) is None


def test_strict_pack_places_every_bundle_on_the_first_node_that_holds_them_all():
    gang = GangSpec(({"CPU": 1.0},) * 3, "STRICT_PACK")

    assert place(gang, ({"CPU": 2.0}, {"CPU": 3.0})) == [1, 1, 1]


def test_search_on_a_large_uniform_cluster_is_fast():
    gang = GangSpec(({"CPU": 3.0},) * 64, "SPREAD")
    nodes = tuple({"CPU": 4.0} for _ in range(63))  # one node short: the search must give up quickly

    started = time.perf_counter()
    assert place(gang, nodes) is None
    assert time.perf_counter() - started < 0.5


def test_gpus_an_autoscaler_can_add_make_a_gpu_gang_feasible():
    gang = GangSpec(({"CPU": 1.0, "GPU": 1.0},) * 2, "STRICT_PACK")
    cpu_only = ClusterSpec(nodes=({"CPU": 4.0},))
    growable = ClusterSpec(nodes=({"CPU": 4.0},), node_types=(NodeType({"CPU": 8.0, "GPU": 4.0}, max_more=2),))
    too_small = ClusterSpec(nodes=({"CPU": 4.0},), node_types=(NodeType({"CPU": 8.0, "GPU": 1.0}, max_more=4),))

    assert not check_gang("train", gang, cpu_only).feasible
    assert check_gang("train", gang, growable).feasible
    verdict = check_gang("train", gang, too_small)
    assert not verdict.feasible and "the largest node has {CPU: 8, GPU: 1}" in verdict.reason


def test_an_unlimited_node_type_grows_only_as_far_as_the_gang_needs():
    spec = ClusterSpec(nodes=(), node_types=(NodeType({"CPU": 2.0}, max_more=-1),))

    assert len(spec.grown(3)) == 3
    assert check_gang("train", GangSpec(({"CPU": 2.0},) * 3, "STRICT_SPREAD"), spec).feasible
    assert "autoscaling up to unlimited × {CPU: 2} more" in spec.describe()


def _sweep(**fields) -> SweepConfig:
    return SweepConfig(step="train", metric="val_accuracy", **{"space": {"lr": {"loguniform": [0.001, 0.1]}}, **fields})


@pytest.mark.parametrize(
    "nodes, gang, samples, expected",
    [
        ([{"CPU": 2.0}], GangSpec(({"CPU": 1.0}, {"CPU": 1.0}), "PACK"), 8, 1),  # one 2-worker DDP gang at a time
        ([{"CPU": 2.0}], GangSpec(({"CPU": 1.0},), "PACK"), 8, 2),
        ([{"CPU": 16.0}, {"CPU": 3.0}], GangSpec(({"CPU": 4.0},), "PACK"), 8, 4),  # the 3-CPU node holds none
        ([{"CPU": 4.0}, {"CPU": 4.0}], GangSpec(({"CPU": 3.0}, {"CPU": 3.0}), "STRICT_SPREAD"), 8, 1),
        ([{"CPU": 64.0}], GangSpec(({"CPU": 1.0},), "PACK"), 3, 3),  # never more than the trials
        ([{"CPU": 1.0}], GangSpec(({"GPU": 1.0},), "PACK"), 8, 1),  # at least one: admission decides
    ],
)
def test_a_sweep_runs_as_many_trials_at_once_as_the_cluster_holds_gangs(nodes, gang, samples, expected):
    assert max_concurrent_trials(_sweep(num_samples=samples), gang, ClusterSpec(tuple(nodes))) == expected


def test_concurrency_counts_the_nodes_an_autoscaler_can_add():
    growable = ClusterSpec(({"CPU": 2.0},), node_types=(NodeType({"CPU": 4.0}, max_more=2),))
    gang = GangSpec(({"CPU": 2.0}, {"CPU": 2.0}), "PACK")

    assert max_concurrent_trials(_sweep(num_samples=10), gang, growable) == 2  # 2 + 4 + 4 CPUs: two 4-CPU gangs
