"""The ``sweep:`` section: its search space, checked as config and against the swept step."""

from __future__ import annotations

import pytest

from raytrain_orch.core.config import load_config
from raytrain_orch.core.errors import ConfigError
from raytrain_orch.core.plan import build_plan

from .conftest import DIGITS_YAML

SWEEP = "sweep={step: train, metric: val_accuracy, space: {lr: {loguniform: [0.001, 0.3]}}}"


@pytest.fixture(scope="module")
def digits():
    from jobs.digits import pipeline

    return pipeline


def plan(pipeline, *overrides):
    return build_plan(load_config(DIGITS_YAML, list(overrides)), pipeline, source="digits.yaml")


def test_the_swept_step_carries_its_sweep_and_a_key_of_its_own(digits):
    swept, plain = plan(digits, SWEEP), plan(digits)

    assert swept.step("train").sweep.space["lr"].loguniform == (0.001, 0.3)
    assert plain.step("train").sweep is None
    assert swept.step("train").cache_key != plain.step("train").cache_key
    assert swept.step("prepare").cache_key == plain.step("prepare").cache_key


@pytest.mark.parametrize("change", ["seed: 1", "searcher: optuna", "scheduler: asha", "num_samples: 3"])
def test_seed_searcher_scheduler_and_samples_are_part_of_the_cache_key(digits, change):
    other = SWEEP.replace("metric: val_accuracy", f"metric: val_accuracy, {change}")

    assert plan(digits, other).step("train").cache_key != plan(digits, SWEEP).step("train").cache_key


@pytest.mark.parametrize(
    "space, message",
    [
        (
            "{lr: {loguniform: [-1, 0.1]}}",
            "sweep.space.lr: loguniform bounds must be > 0, got [-1.0, 0.1]; use uniform",
        ),
        ("{lr: {uniform: [0.3, 0.1]}}", "sweep.space.lr: uniform needs [low, high] with low < high; got [0.3, 0.1]"),
        (
            "{lr: {uniform: [0.1, 0.3], choice: [0.2]}}",
            "sweep.space.lr: give exactly one of uniform, loguniform, randint, choice, grid",
        ),
        (
            "{lr: {logunifrom: [0.001, 0.1]}}",
            "unknown key 'sweep.space.lr.logunifrom'; did you mean 'sweep.space.lr.loguniform'?",
        ),
        (
            "{lrr: {loguniform: [0.001, 0.1]}}",
            "sweep.space.lrr: step 'train' has no param 'lrr'; did you mean 'sweep.space.lr'?",
        ),
        ("{hidden: {choice: [0, 64]}}", "sweep.space.hidden.choice includes 0, which step 'train' rejects"),
    ],
)
def test_a_bad_space_is_a_one_line_config_error(digits, space, message):
    with pytest.raises(ConfigError) as raised:
        plan(digits, f"sweep={{step: train, metric: val_accuracy, space: {space}}}")

    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_grid_needs_the_random_searcher(digits):
    with pytest.raises(
        ConfigError, match="grid dimensions \\(hidden\\) need searcher: random; with optuna use choice instead"
    ):
        plan(digits, "sweep={step: train, metric: val_accuracy, searcher: optuna, space: {hidden: {grid: [64, 128]}}}")


def test_only_a_train_step_can_be_swept(digits):
    with pytest.raises(ConfigError, match="sweep.step 'prepare' is not a train step of pipeline 'digits'"):
        plan(digits, "sweep={step: prepare, metric: val_accuracy, space: {lr: {loguniform: [0.001, 0.3]}}}")
