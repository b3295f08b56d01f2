"""Config loading, strict keys with did-you-mean, and ``rto validate`` (``--set``: test_overrides)."""

from __future__ import annotations

import os

import pytest

from raytrain_orch.cli.main import main
from raytrain_orch.core import constants
from raytrain_orch.core.config import load_config
from raytrain_orch.core.errors import EXIT_OK, EXIT_USAGE, ConfigError
from raytrain_orch.core.plan import build_plan
from raytrain_orch.engine.driver import prepare

from .conftest import DIGITS_YAML, write_yaml


def _digits_pipeline():
    from jobs.digits import pipeline

    return pipeline


# --- loading -------------------------------------------------------------------------------


def test_digits_yaml_loads_with_its_values():
    config = load_config(DIGITS_YAML)

    assert config.name == "digits"
    assert config.pipeline == "jobs.digits:pipeline"
    assert list(config.steps) == ["prepare", "train", "evaluate", "register"]
    assert config.steps["train"].scaling.num_workers == 2
    assert config.steps["train"].params["lr"] == 0.05
    assert config.experiment == "digits"


@pytest.mark.parametrize(
    ("mutate", "path", "suggestion"),
    [
        (lambda raw: raw.update(stroage="./x"), "stroage", "storage"),
        (
            lambda raw: raw["steps"]["train"]["scaling"].update(num_worker=2),
            "steps.train.scaling.num_worker",
            "steps.train.scaling.num_workers",
        ),
        (lambda raw: raw["mlflow"].update(trackinguri="sqlite:///x.db"), "mlflow.trackinguri", "mlflow.tracking_uri"),
        (lambda raw: raw["steps"]["train"].update(retires={"max": 1}), "steps.train.retires", "steps.train.retries"),
    ],
    ids=["top-level", "scaling", "mlflow", "step"],
)
def test_unknown_key_names_its_full_path_and_suggests_the_nearest(tmp_path, digits_raw, mutate, path, suggestion):
    mutate(digits_raw)
    config_file = write_yaml(tmp_path / "bad.yaml", digits_raw)

    with pytest.raises(ConfigError) as raised:
        load_config(config_file)

    message = str(raised.value)
    assert message.startswith(f"{config_file}: ")
    assert f"unknown key {path!r}" in message
    assert f"did you mean {suggestion!r}?" in message


def test_unknown_key_lists_the_valid_keys_at_that_level(tmp_path, digits_raw):
    digits_raw["mlflow"]["trackinguri"] = "x"

    with pytest.raises(ConfigError, match=r"valid keys here: champion, experiment, system_metrics, tracking_uri$"):
        load_config(write_yaml(tmp_path / "bad.yaml", digits_raw))


def test_wrong_type_names_the_key_and_the_value_given(tmp_path, digits_raw):
    digits_raw["steps"]["train"]["retries"] = {"max": "two"}

    with pytest.raises(ConfigError) as raised:
        load_config(write_yaml(tmp_path / "bad.yaml", digits_raw))

    assert "steps.train.retries.max: Input should be a valid integer" in str(raised.value)
    assert "(got 'two')" in str(raised.value)


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("two", "give a positive integer, or [min, max] for an elastic step (got 'two')"),
        ([3, 1], "[min, max] needs min <= max (got [3, 1])"),
        ([0, 2], "give a positive integer, or [min, max] for an elastic step (got [0, 2])"),
    ],
)
def test_num_workers_is_a_count_or_a_range(tmp_path, digits_raw, given, problem):
    digits_raw["steps"]["train"]["scaling"]["num_workers"] = given

    with pytest.raises(ConfigError) as raised:
        load_config(write_yaml(tmp_path / "bad.yaml", digits_raw))

    assert f"steps.train.scaling.num_workers: {problem}" in str(raised.value)


def test_an_elastic_range_plans_its_minimum_and_shows_the_range(tmp_path, digits_raw):
    from jobs.digits import pipeline
    from raytrain_orch.core.plan import build_plan

    digits_raw["steps"]["train"]["scaling"]["num_workers"] = [1, 3]
    config = load_config(write_yaml(tmp_path / "elastic.yaml", digits_raw))
    step = build_plan(config, pipeline).step("train")

    assert step.scaling is not None and step.scaling.elastic
    assert len(step.gang.bundles) == 1  # admitted as soon as its minimum fits
    assert step.describe_gang() == "1–3 × {CPU: 1} PACK (elastic)"
    assert step.to_dict()["workers"] == "1–3"


def test_zero_workers_is_rejected_naming_the_key():
    with pytest.raises(
        ConfigError,
        match=r"steps\.train\.scaling\.num_workers: give a positive integer, or \[min, max\] for an elastic step "
        r"\(got 0\)",
    ):
        load_config(DIGITS_YAML, ["train.scaling.num_workers=0"])


def test_missing_required_key_is_named(tmp_path, digits_raw):
    del digits_raw["pipeline"]

    with pytest.raises(ConfigError, match=r"missing required key 'pipeline'"):
        load_config(write_yaml(tmp_path / "bad.yaml", digits_raw))


def test_pipeline_spec_must_be_module_colon_attribute(tmp_path, digits_raw):
    digits_raw["pipeline"] = "jobs/digits.py"

    with pytest.raises(
        ConfigError, match=r"pipeline: must look like 'package\.module:attribute', got 'jobs/digits\.py'"
    ):
        load_config(write_yaml(tmp_path / "bad.yaml", digits_raw))


def test_every_validation_error_is_reported_on_one_line(tmp_path, digits_raw):
    digits_raw["stroage"] = "x"
    digits_raw["steps"]["train"]["scaling"]["num_workers"] = 0

    with pytest.raises(ConfigError) as raised:
        load_config(write_yaml(tmp_path / "bad.yaml", digits_raw))

    message = str(raised.value)
    assert "\n" not in message
    assert "unknown key 'stroage'" in message
    assert "steps.train.scaling.num_workers" in message


# --- step params: validated against the pipeline's params model ------------------------------


def test_negative_lr_is_rejected_by_the_pipelines_params_model():
    config = load_config(DIGITS_YAML, ["train.params.lr=-1"])  # the file layer accepts any params

    with pytest.raises(ConfigError) as raised:
        build_plan(config, _digits_pipeline(), source="digits.yaml")

    assert str(raised.value) == "digits.yaml: steps.train.params.lr: Input should be greater than 0 (got -1)"


def test_negative_lr_is_rejected_by_prepare(in_repo, isolated):
    with pytest.raises(ConfigError, match=r"steps\.train\.params\.lr: Input should be greater than 0 \(got -1\)"):
        prepare(DIGITS_YAML, [*isolated, "train.params.lr=-1"])


def test_unknown_param_suggests_the_nearest_param(in_repo, isolated):
    with pytest.raises(ConfigError) as raised:
        prepare(DIGITS_YAML, [*isolated, "train.params.lrr=0.1"])

    assert "unknown key 'steps.train.params.lrr'; did you mean 'steps.train.params.lr'?" in str(raised.value)


def test_params_for_a_step_that_declares_none_are_rejected(in_repo, isolated):
    with pytest.raises(
        ConfigError, match=r"step 'evaluate' declares no params, but the config gives steps\.evaluate\.params: \['x'\]"
    ):
        prepare(DIGITS_YAML, [*isolated, "evaluate.params.x=1"])


# --- unreadable files --------------------------------------------------------------------------


def test_missing_file_is_one_clear_error(tmp_path):
    missing = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError) as raised:
        load_config(missing)

    assert (
        str(raised.value)
        == f"config file {str(missing)!r} not found; pass the path of a YAML file such as configs/digits.yaml"
    )


def test_invalid_yaml_names_the_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: digits\npipeline: jobs.digits:pipeline\nsteps: {train: [1, 2}\n")

    with pytest.raises(ConfigError) as raised:
        load_config(broken)

    message = str(raised.value)
    assert message.startswith(f"{broken}: not valid YAML at line 3, column ")
    assert "\n" not in message


@pytest.mark.parametrize("text", ["- a\n- b\n", "", "just a string\n"], ids=["list", "empty", "scalar"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(text)

    with pytest.raises(ConfigError, match=r"the top level must be a mapping of keys"):
        load_config(config_file)


def test_a_directory_is_a_config_error_not_a_crash(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot be read \(Is a directory\)"):
        load_config(tmp_path)


def test_a_binary_file_is_a_config_error_not_a_crash(tmp_path):
    binary = tmp_path / "model.pt"
    binary.write_bytes(b"\x80\x04\x95\xff\xfe")

    with pytest.raises(ConfigError, match=r"cannot be read .*UTF-8 YAML file"):
        load_config(binary)


# --- the CLI: rto validate ---------------------------------------------------------------------


@pytest.fixture
def no_debug(monkeypatch):
    monkeypatch.setattr(constants, "DEBUG", False)


def test_validate_accepts_the_digits_config(in_repo, isolated, tmp_path, capsys, no_debug):
    code = main(["validate", str(DIGITS_YAML), *[arg for item in isolated for arg in ("--set", item)]])

    captured = capsys.readouterr()
    assert code == EXIT_OK
    assert captured.err == ""
    assert (
        "valid — pipeline 'digits', steps prepare (task), train (train), evaluate (task), register (task)"
        in captured.out
    )
    assert not (tmp_path / "runs").exists()  # validate writes nothing
    assert not (tmp_path / "mlflow.db").exists()


def _assert_one_line_error(code: int, captured, *parts: str) -> None:
    assert code == EXIT_USAGE == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("rto: error: ")
    assert "Traceback" not in captured.err
    for part in parts:
        assert part in lines[0]
    assert captured.out == ""


def test_validate_bad_value_in_file_exits_2_with_one_line(in_repo, isolated, tmp_path, digits_raw, capsys, no_debug):
    digits_raw["steps"]["train"]["scaling"]["num_workers"] = "two"
    config_file = write_yaml(tmp_path / "bad.yaml", digits_raw)

    code = main(["validate", str(config_file), "--set", isolated[0], "--set", isolated[1]])

    _assert_one_line_error(code, capsys.readouterr(), "steps.train.scaling.num_workers", "(got 'two')")


def test_validate_bad_set_value_exits_2_with_one_line(in_repo, isolated, capsys, no_debug):
    code = main(
        ["validate", str(DIGITS_YAML), "--set", isolated[0], "--set", isolated[1], "--set", "train.params.lr=-1"]
    )

    _assert_one_line_error(code, capsys.readouterr(), "steps.train.params.lr: Input should be greater than 0")


def test_validate_unknown_key_exits_2_with_did_you_mean(in_repo, isolated, capsys, no_debug):
    code = main(["validate", str(DIGITS_YAML), "--set", isolated[0], "--set", "mlflow.trackinguri=x"])

    _assert_one_line_error(
        code, capsys.readouterr(), "unknown key 'mlflow.trackinguri'", "did you mean 'mlflow.tracking_uri'?"
    )


def test_validate_missing_file_exits_2_with_one_line(tmp_path, capsys, no_debug):
    code = main(["validate", str(tmp_path / "nope.yaml")])

    _assert_one_line_error(code, capsys.readouterr(), "not found")


def test_validate_unknown_pipeline_module_exits_2(in_repo, isolated, capsys, no_debug):
    code = main(
        [
            "validate",
            str(DIGITS_YAML),
            "--set",
            isolated[0],
            "--set",
            isolated[1],
            "--set",
            "pipeline=jobs.nosuch:pipeline",
        ]
    )

    _assert_one_line_error(code, capsys.readouterr(), "cannot import 'jobs.nosuch'")


def test_storage_options_point_this_process_and_the_workers_at_the_endpoint(monkeypatch):
    """The endpoint and region reach pyarrow, Ray Train and boto3 as the standard AWS variables;
    credentials have no key at all."""
    from raytrain_orch.core.config import StorageOptions
    from raytrain_orch.engine.driver import prepare

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert StorageOptions().environment() == {}
    with pytest.raises(ConfigError, match=r"unknown key 'storage_options.secret_access_key'"):
        prepare("configs/digits.yaml", ["storage_options.secret_access_key=x"])
    prepared = prepare(
        "configs/digits.yaml",
        ["storage_options.endpoint_url=http://127.0.0.1:9", "storage_options.region=eu-west-1"],
    )
    assert prepared.config.storage_options.environment() == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9" and os.environ["AWS_DEFAULT_REGION"] == "eu-west-1"
