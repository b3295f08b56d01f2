"""A pipeline's Ray job as plain data (``core.submission``): the job each attempt submits, the
inputs a user types, the warnings about storage a cluster would not share."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from raytrain_orch.core import submission
from raytrain_orch.core.errors import ConfigError

from .conftest import REPO

RUN = "digits-20261126-105612-adef62"


def spec(**changes) -> submission.JobSpec:
    values = dict(
        run_id=RUN,
        pipeline="digits",
        config="configs/digits.yaml",
        overrides=("train.params.epochs=3",),
        storage="s3://bucket/rto-runs",
        working_dir=".",
    )
    return submission.JobSpec(**{**values, **changes})


def test_the_first_attempt_runs_the_config_under_the_run_id_the_job_id_derives_from():
    request = spec().request(1)

    assert request.submission_id == f"rto-{RUN}-1"
    assert submission.parse_submission_id(request.submission_id) == (RUN, 1)
    assert request.entrypoint == [
        "python",
        "-m",
        "raytrain_orch",
        "run",
        "configs/digits.yaml",
        "--run-id",
        RUN,
        "--set",
        "train.params.epochs=3",
    ]
    assert request.metadata == {
        "rto.run_id": RUN,
        "rto.attempt": "1",
        "rto.pipeline": "digits",
        "rto.config": "configs/digits.yaml",
        "rto.storage": "s3://bucket/rto-runs",
        "rto.env": "",
    }


def test_a_retry_resumes_the_run_after_the_job_that_ended():
    request = spec().request(3)

    assert request.submission_id == f"rto-{RUN}-3"
    assert request.entrypoint == [
        "python",
        "-m",
        "raytrain_orch",
        "resume",
        RUN,
        "--storage",
        "s3://bucket/rto-runs",
        "--after-job",
        f"rto-{RUN}-2",
    ]
    assert request.metadata["rto.attempt"] == "3"


def test_the_working_dir_ships_without_environments_run_storage_mlflow_stores_or_git():
    env = spec(pip=("mlflow>=3",)).request(1).runtime_env

    assert env["working_dir"] == "."
    assert {".venv", "rto-runs", "mlflow.db", "mlruns", ".git"} <= set(env["excludes"])
    assert env["pip"] == ["mlflow>=3"]
    assert env["env_vars"]["RTO_PLAIN_PROGRESS"] == "1"  # a log, not a live view
    assert int(env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30  # time for a stopped driver to end its run KILLED


def test_no_pip_key_when_nothing_is_asked_for():
    assert "pip" not in spec().request(1).runtime_env


def test_a_secret_override_travels_in_the_jobs_env_not_in_its_logged_entrypoint():
    secret = 'p@ss w\'rd "$HOME"'  # quotes, a space and a $ that must not expand
    request = spec(overrides=("steps.fetch.params.api_token=" + secret, "steps.fetch.params.rows=5")).request(1)
    line = submission.shell_line(request.entrypoint)

    assert secret not in line and secret not in json.dumps(request.metadata)
    assert request.runtime_env["env_vars"]["RTO_SECRET_SET_1"] == secret
    shown = request.shown()
    assert secret not in json.dumps(shown) and shown["runtime_env"]["env_vars"]["RTO_SECRET_SET_1"] == "***"
    # The job's shell (Ray runs the entrypoint with shell=True) gives the driver the real value.
    echo = line.replace(
        "python -m raytrain_orch", f"{sys.executable} -c 'import json, sys; print(json.dumps(sys.argv[1:]))'", 1
    )
    done = subprocess.run(
        echo, shell=True, env={"RTO_SECRET_SET_1": secret}, capture_output=True, text=True, check=True
    )
    argv = json.loads(done.stdout)
    assert argv[-4:] == ["--set", "steps.fetch.params.api_token=" + secret, "--set", "steps.fetch.params.rows=5"]


def test_passed_env_vars_keep_their_values_for_the_job_but_secrets_are_shown_as_stars():
    env = submission.passed_env(["SOURCE_API_TOKEN", "REGION=eu-west-1"], environ={"SOURCE_API_TOKEN": "tok-123"})
    request = spec(env=env).request(1)

    assert request.runtime_env["env_vars"]["SOURCE_API_TOKEN"] == "tok-123"
    assert request.shown()["runtime_env"]["env_vars"]["SOURCE_API_TOKEN"] == "***"
    assert request.shown()["runtime_env"]["env_vars"]["REGION"] == "eu-west-1"
    assert request.metadata["rto.env"] == "REGION,SOURCE_API_TOKEN"  # names only


def test_shown_command_hides_a_literal_secret_set():
    line = submission.shown_command(["rto", "run", "c.yaml", "--set", "db.password=hunter2", "--set", "max_tokens=5"])

    assert line == "rto run c.yaml --set 'db.password=***' --set max_tokens=5"


def test_the_address_is_the_dashboards_url(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match=r"pass --address http://HEAD:8265"):
        submission.cluster_address(None)
    with pytest.raises(ConfigError, match=r"give the Ray dashboard's URL, e.g. http://10.0.0.5:8265"):
        submission.cluster_address("10.0.0.5:6379")
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265/")
    assert submission.cluster_address(None) == "http://head:8265"


def test_env_and_pip_inputs_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"--env MISSING_VAR: MISSING_VAR is not set here"):
        submission.passed_env(["MISSING_VAR"], environ={})
    with pytest.raises(ConfigError, match=r"not an environment variable name"):
        submission.passed_env(["1BAD=x"], environ={})
    requirements = tmp_path / "cluster.txt"
    requirements.write_text("# what the image lacks\nmlflow>=3  # tracking\n\nscikit-learn\n")
    assert submission.pip_requirements([str(requirements), "optuna"]) == ("mlflow>=3", "scikit-learn", "optuna")
    with pytest.raises(ConfigError, match=r"no such requirements file"):
        submission.pip_requirements([str(tmp_path / "nope.txt")])


def test_the_config_must_be_inside_the_shipped_working_dir(tmp_path):
    assert submission.config_in_working_dir(REPO / "configs/digits.yaml", REPO) == "configs/digits.yaml"
    with pytest.raises(ConfigError, match=r"outside the working dir"):
        submission.config_in_working_dir(tmp_path / "x.yaml", REPO)


def test_relative_storage_and_sqlite_store_are_warned_about_on_a_cluster():
    assert len(submission.storage_warnings("./rto-runs", "sqlite:///mlflow.db")) == 2
    assert submission.storage_warnings("s3://bucket/runs", "http://head:5000") == []
    assert submission.storage_warnings("/mnt/shared/runs", "sqlite:////mnt/shared/mlflow.db") == []
