"""``build_plan`` as plain data (gangs, cache keys) and ``check_gang`` feasibility."""

from __future__ import annotations

import json
import time

import pytest

from raytrain_orch.core.config import load_config, parse_config
from raytrain_orch.core.errors import ConfigError
from raytrain_orch.core.pipeline import Params, Pipeline
from raytrain_orch.core.placement import ClusterSpec, GangSpec, NodeType, check_gang, max_concurrent_trials, place
from raytrain_orch.core.plan import build_plan
from raytrain_orch.core.sweep_config import SweepConfig

from .conftest import DIGITS_GPU_YAML, DIGITS_YAML


@pytest.fixture(scope="module")
def digits():
    from jobs.digits import pipeline

    return pipeline


def plan_of(pipeline, *overrides, path=DIGITS_YAML):
    return build_plan(load_config(path, list(overrides)), pipeline, source=str(path))


def cluster(*nodes: dict) -> ClusterSpec:
    return ClusterSpec(nodes=tuple({k: float(v) for k, v in n.items()} for n in nodes))


# --- build_plan ---------------------------------------------------------------------------------


def test_digits_plan_orders_steps_and_wires_inputs(digits):
    plan = plan_of(digits)

    assert [s.name for s in plan.steps] == ["prepare", "train", "evaluate", "register"]
    assert plan.step("evaluate").inputs == ("prepare", "train")
    assert plan.downstream("train") == {"evaluate", "register"}
    assert plan.downstream("prepare") == {"train", "evaluate", "register"}
    assert plan.downstream("register") == set()


def test_digits_train_gang_is_two_one_cpu_workers_packed(digits):
    train = plan_of(digits).step("train")

    assert train.kind == "train"
    assert train.gang == GangSpec(bundles=({"CPU": 1.0}, {"CPU": 1.0}), strategy="PACK")
    assert train.gang.describe() == "2 × {CPU: 1} PACK"
    assert train.scaling.num_workers == 2
    assert train.failure.max_failures == 2
    assert train.checkpoint.score_attribute == "val_accuracy"
    assert train.params.lr == 0.05 and train.params.epochs == 20


@pytest.mark.parametrize("step", ["prepare", "evaluate", "register"])
def test_digits_task_steps_have_one_bundle(digits, step):
    planned = plan_of(digits).step(step)

    assert planned.kind == "task"
    assert planned.gang == GangSpec(bundles=({"CPU": 1.0},), strategy="PACK")
    assert planned.scaling is None


def test_task_step_not_in_the_config_gets_the_default_gang(digits):
    evaluate = plan_of(digits, path=DIGITS_GPU_YAML).step("evaluate")  # digits_gpu.yaml has no evaluate section

    assert evaluate.gang.describe() == "1 × {CPU: 1} PACK"
    assert evaluate.retries.max == 2


def test_use_gpu_adds_one_gpu_to_each_worker(digits):
    train = plan_of(digits, "train.scaling.use_gpu=true", "train.scaling.num_workers=3").step("train")

    assert train.gang.bundles == ({"CPU": 1.0, "GPU": 1.0},) * 3
    assert train.gang.total() == {"CPU": 3.0, "GPU": 3.0}


def test_plan_to_dict_is_json_for_rto_plan(digits):
    data = json.loads(json.dumps(plan_of(digits).to_dict()))

    assert data["pipeline"] == "digits"
    train = next(s for s in data["steps"] if s["name"] == "train")
    assert train["gang"] == {"bundles": [{"CPU": 1.0}, {"CPU": 1.0}], "strategy": "PACK"}
    assert train["params"]["hidden"] == 128


def _keys(plan) -> dict[str, str]:
    return {s.name: s.cache_key for s in plan.steps}


def test_same_config_gives_same_cache_keys(digits):
    assert _keys(plan_of(digits)) == _keys(plan_of(digits))


def test_changing_a_train_param_changes_train_and_downstream_keys_only(digits):
    before = _keys(plan_of(digits))
    after = _keys(plan_of(digits, "train.params.lr=0.01"))

    assert after["prepare"] == before["prepare"]
    for step in ("train", "evaluate", "register"):
        assert after[step] != before[step], step


def test_changing_a_prepare_param_changes_every_key(digits):
    before = _keys(plan_of(digits))
    after = _keys(plan_of(digits, "prepare.params.seed=1"))

    assert all(after[s] != before[s] for s in before)


def test_default_param_written_out_gives_the_same_key(digits):
    # epochs defaults to 20: writing the default explicitly is the same resolved params.
    assert _keys(plan_of(digits, "train.params.epochs=20")) == _keys(plan_of(digits))


def test_step_version_is_part_of_the_cache_key():
    class N(Params):
        n: int = 1

    def build(version: str) -> dict[str, str]:
        pipeline = Pipeline("v")

        @pipeline.task(version="1")
        def a(ctx): ...

        @pipeline.task(version=version, params=N)
        def b(ctx, params, a): ...

        @pipeline.task(version="1")
        def c(ctx, b): ...

        return _keys(build_plan(load_config(DIGITS_YAML, ["steps={}"]), pipeline))

    one, two = build("1"), build("2")
    assert one["a"] == two["a"]
    assert one["b"] != two["b"]
    assert one["c"] != two["c"]


@pytest.mark.parametrize(
    "section",
    [
        "scaling.num_workers=2",
        "failure.max_failures=1",
        "checkpoint.num_to_keep=1",
        "strategy=fsdp",
        "strategy_options.mixed_precision=bf16",
    ],
)
def test_train_only_settings_on_a_task_step_are_config_errors(digits, section):
    with pytest.raises(ConfigError) as raised:
        plan_of(digits, f"prepare.{section}")

    name = section.split(".")[0].split("=")[0]
    assert f"steps.prepare.{name} applies to train steps only; 'prepare' is a task step" in str(raised.value)


def test_a_train_step_is_ddp_unless_it_asks_for_fsdp_and_rto_plan_says_which(digits):
    ddp = plan_of(digits).step("train")
    assert (ddp.strategy, ddp.strategy_options, ddp.describe_kind()) == ("ddp", None, "train")
    assert plan_of(digits).to_dict()["steps"][1]["strategy"] == "ddp"

    fsdp = plan_of(digits, "train.strategy=fsdp", "train.strategy_options.mixed_precision=bf16").step("train")
    assert fsdp.strategy == "fsdp" and fsdp.describe_kind() == "train (fsdp)"
    assert fsdp.strategy_options.mixed_precision == "bf16" and fsdp.strategy_options.reshard_after_forward
    assert fsdp.checkpoint.asynchronous  # sharded checkpoints upload in the background by default
    assert fsdp.cache_key == ddp.cache_key  # how the model is spread over the workers is no input of its result


def test_strategy_options_without_fsdp_say_how_to_fix_it(digits):
    with pytest.raises(ConfigError) as raised:
        plan_of(digits, "train.strategy_options.mixed_precision=bf16")
    assert "steps.train.strategy_options applies to strategy fsdp only; set steps.train.strategy: fsdp" in str(
        raised.value
    )


def test_an_unknown_strategy_names_the_choices(digits):
    with pytest.raises(ConfigError) as raised:
        plan_of(digits, "train.strategy=zero3")
    assert (
        "steps.train.strategy" in str(raised.value) and "'ddp'" in str(raised.value) and "'fsdp'" in str(raised.value)
    )


def test_unknown_step_in_config_suggests_the_nearest_step(digits):
    with pytest.raises(ConfigError) as raised:
        plan_of(digits, "steps.trian.params.lr=0.1")

    assert str(raised.value) == (
        f"{DIGITS_YAML}: unknown step 'steps.trian'; did you mean 'steps.train'? "
        "pipeline 'digits' has steps ['evaluate', 'prepare', 'register', 'train']"
    )


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


def test_digits_plan_fits_a_two_cpu_machine(digits):
    plan = plan_of(digits)

    assert all(check_gang(s.name, s.gang, cluster({"CPU": 2})).feasible for s in plan.steps)


def test_digits_gpu_plan_is_infeasible_for_train_on_a_cpu_only_node(digits):
    plan = plan_of(digits, path=DIGITS_GPU_YAML)

    verdicts = {s.name: check_gang(s.name, s.gang, ClusterSpec(nodes=({"CPU": 2.0},))) for s in plan.steps}

    assert [name for name, v in verdicts.items() if not v.feasible] == ["train"]
    assert verdicts["train"].reason.startswith("step train needs 2 × {CPU: 1, GPU: 1} STRICT_PACK")
    assert "no GPU at all" in verdicts["train"].reason


def test_digits_gpu_plan_needs_both_gpus_on_one_node(digits):
    train = plan_of(digits, path=DIGITS_GPU_YAML).step("train")

    split = check_gang("train", train.gang, cluster({"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}))
    together = check_gang("train", train.gang, cluster({"CPU": 8, "GPU": 2}))

    assert (
        split.reason
        == "step train needs 2 × {CPU: 1, GPU: 1} STRICT_PACK on one node; the largest node has {CPU: 8, GPU: 1}"
    )
    assert together.feasible


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


def test_a_task_step_gang_has_as_many_bundles_as_configured(digits):
    plan = plan_of(digits, "prepare.bundles=2", "prepare.placement_strategy=STRICT_SPREAD")

    assert plan.step("prepare").gang == GangSpec(({"CPU": 1.0}, {"CPU": 1.0}), "STRICT_SPREAD")


@pytest.mark.parametrize(
    "override, instead",
    [
        ("resources={CPU: 2}", "scaling.resources_per_worker"),
        ("bundles=2", "scaling.num_workers"),
        ("placement_strategy=SPREAD", "scaling.placement_strategy"),
    ],
)
def test_task_only_settings_on_a_train_step_name_the_train_setting_to_use(digits, override, instead):
    key = override.split("=")[0]

    with pytest.raises(
        ConfigError,
        match=f"steps.train.{key} applies to task steps only; for train step 'train' set steps.train.{instead}",
    ):
        plan_of(digits, f"train.{override}")


def test_a_resolved_config_with_every_default_spelled_out_plans_the_same(digits):
    config = load_config(DIGITS_YAML)
    resolved = parse_config(config.to_yaml(), "runs/RUN/config.yaml")  # what `rto resume` reads back

    assert build_plan(resolved, digits).to_dict() == build_plan(config, digits).to_dict()


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
