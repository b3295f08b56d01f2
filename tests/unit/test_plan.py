"""``build_plan`` as plain data (gangs, cache keys, checks of the config against the pipeline), and
a plan checked against a cluster."""

from __future__ import annotations

import json

import pytest

from raytrain_orch.core.config import load_config, parse_config
from raytrain_orch.core.errors import ConfigError
from raytrain_orch.core.pipeline import Params, Pipeline
from raytrain_orch.core.placement import ClusterSpec, GangSpec, check_gang
from raytrain_orch.core.plan import build_plan

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


# --- a plan on a cluster --------------------------------------------------------------------


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
