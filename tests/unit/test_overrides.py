"""``--set`` overrides: a dotted path (a step's shortcut or the full path), the value parsed as
YAML and validated like the file, and the errors a bad one gets."""

from __future__ import annotations

import pytest

from raytrain_orch.core.config import load_config
from raytrain_orch.core.errors import ConfigError
from raytrain_orch.engine.driver import prepare

from .conftest import DIGITS_GPU_YAML, DIGITS_YAML


def test_set_step_shortcut_and_full_path_parse_yaml_types():
    config = load_config(
        DIGITS_YAML,
        [
            "train.params.lr=0.01",
            "steps.train.params.epochs=3",
            "train.scaling.use_gpu=true",
            "train.retries.on=[ValueError, KeyError]",
        ],
    )

    train = config.steps["train"]
    assert train.params["lr"] == 0.01 and type(train.params["lr"]) is float
    assert train.params["epochs"] == 3 and type(train.params["epochs"]) is int
    assert train.scaling.use_gpu is True
    assert train.retries.on == ("ValueError", "KeyError")
    assert train.params["hidden"] == 128  # siblings from the file are kept


def test_set_quoted_value_stays_a_string():
    config = load_config(DIGITS_YAML, ["register.params.model_name='123'"])

    assert config.steps["register"].params["model_name"] == "123"


def test_set_creates_a_missing_section():
    config = load_config(DIGITS_GPU_YAML, ["ray.num_cpus=4", "ray.address=auto"])

    assert config.ray.num_cpus == 4
    assert config.ray.address == "auto"


def test_set_is_validated_like_the_file():
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'steps\.train\.scaling\.num_worker'; did you mean 'steps\.train\.scaling\.num_workers'\?",
    ):
        load_config(DIGITS_YAML, ["train.scaling.num_worker=4"])


def test_set_without_equals_is_a_clear_error():
    with pytest.raises(ConfigError) as raised:
        load_config(DIGITS_YAML, ["train.params.lr"])

    assert str(raised.value) == "--set 'train.params.lr': expected KEY=VALUE, e.g. --set steps.train.params.lr=0.01"


def test_set_with_empty_key_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"--set '=3': expected KEY=VALUE"):
        load_config(DIGITS_YAML, ["=3"])


@pytest.mark.parametrize(("item", "scalar"), [("train.params.lr.x=1", "lr"), ("name.first=x", "name")])
def test_set_into_a_scalar_is_a_clear_error(item, scalar):
    with pytest.raises(ConfigError) as raised:
        load_config(DIGITS_YAML, [item])

    assert str(raised.value) == f"--set {item!r}: {scalar!r} holds a value, not a mapping of keys"


def test_set_with_invalid_yaml_value_says_to_quote_it():
    with pytest.raises(ConfigError, match=r"--set 'train\.params\.lr=\[1': the value is not valid YAML; quote it"):
        load_config(DIGITS_YAML, ["train.params.lr=[1"])


def test_set_step_shortcut_works_for_a_step_the_file_leaves_at_defaults():
    config = load_config(DIGITS_GPU_YAML, ["evaluate.resources.CPU=2"])  # digits_gpu.yaml has no evaluate section

    assert config.steps["evaluate"].resources == {"CPU": 2.0}


def test_set_near_miss_of_a_top_level_key_says_so():
    with pytest.raises(ConfigError) as raised:
        load_config(DIGITS_YAML, ["mlfow.tracking_uri=sqlite:///x.db"])

    assert str(raised.value) == "--set 'mlfow.tracking_uri=sqlite:///x.db': unknown key 'mlfow'; did you mean 'mlflow'?"


def test_set_for_a_step_the_pipeline_lacks_suggests_the_nearest_step(in_repo, isolated):
    with pytest.raises(ConfigError, match=r"unknown step 'steps\.trian'; did you mean 'steps\.train'\?"):
        prepare(DIGITS_YAML, [*isolated, "trian.params.lr=0.1"])
