"""Secrets in params and configs are redacted before MLflow or a log sees them."""

from __future__ import annotations

import pytest

from raytrain_orch.core.redact import REDACTED, is_secret, redact


@pytest.mark.parametrize(
    "key",
    [
        "api_token",
        "token",
        "db_password",
        "passwd",
        "aws_secret_access_key",
        "AWS_SECRET_ACCESS_KEY",
        "private-key",
        "apiKey",
        "api_key",
        "key",
        "credentials",
        "RAY_AUTH_TOKEN",
        "steps.fetch.params.api_token",
    ],
)
def test_keys_that_name_secrets(key):
    assert is_secret(key)


@pytest.mark.parametrize(
    "key",
    [
        "lr",
        "hidden",
        "max_tokens",
        "tokenizer",
        "key_frames",
        "monkey",
        "keep",
        "num_keys",
        "author",
        "steps.train.params.epochs",
        "PWD",  # the working directory: a path, never a secret
        "OLDPWD",
    ],
)
def test_keys_that_do_not(key):
    assert not is_secret(key)


def test_redact_replaces_secret_values_at_any_depth_and_keeps_the_rest():
    config = {
        "mlflow": {"tracking_uri": "http://h:5000"},
        "steps": {"fetch": {"params": {"api_token": "abc123", "rows": 10}}},
        "env": [{"name": "x", "password": "hunter2"}],
        "token": None,
    }

    shown = redact(config)

    assert shown == {
        "mlflow": {"tracking_uri": "http://h:5000"},
        "steps": {"fetch": {"params": {"api_token": REDACTED, "rows": 10}}},
        "env": [{"name": "x", "password": REDACTED}],
        "token": None,
    }
    assert config["steps"]["fetch"]["params"]["api_token"] == "abc123"  # the original is left as it was


def test_the_plan_shows_no_secret_but_its_cache_key_follows_the_real_value(tmp_path):
    from raytrain_orch.core.config import load_config
    from raytrain_orch.core.pipeline import load_pipeline
    from raytrain_orch.core.plan import build_plan
    from tests.conftest import write_config

    keys = []
    for token in ("abc123", "def456"):
        path = write_config(
            tmp_path, "secretive", "tests.pipelines.secretive:pipeline", {"fetch": {"params": {"api_token": token}}}
        )
        config = load_config(path)
        plan = build_plan(config, load_pipeline(config.pipeline))
        assert plan.to_dict()["steps"][0]["params"] == {"api_token": REDACTED, "rows": 10}
        keys.append(plan.steps[0].cache_key)
    assert keys[0] != keys[1]


def test_secret_values_are_those_under_secret_keys_long_enough_to_be_secrets():
    from raytrain_orch.core.redact import secret_values

    params = {
        "api_token": "tok-123456",
        "rows": 10,
        "db": {"password": "hunter2hunter2", "host": "db.internal"},
        "key": "short",
    }
    environ = {
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI",
        "PATH": "/usr/bin",
        "RTO_SECRET_SET_1": "p@ss word",
        "MAX_TOKENS": "123456",
    }

    assert secret_values(params, environ) == ("hunter2hunter2", "wJalrXUtnFEMI", "tok-123456", "p@ss word")


def test_masked_replaces_every_occurrence_longest_first():
    from raytrain_orch.core.redact import masked

    assert masked("a tok-123456 and tok-123456-extra", ("tok-123456-extra", "tok-123456")) == "a *** and ***"
    assert masked("nothing here", ("tok-123456",)) == "nothing here"


def test_a_path_is_never_masked_even_under_a_secret_looking_name(tmp_path):
    from raytrain_orch.core.redact import masked, secret_values

    job = tmp_path / "jobs"
    job.mkdir()
    environ = {"PWD": str(tmp_path), "DB_PASSWORD_FILE": str(job), "DB_PASSWORD": "hunter2hunter2"}
    found = secret_values(environ)

    assert found == ("hunter2hunter2",)
    traceback = f'File "{job}/train.py", line 3, in train\n  connect(password="hunter2hunter2")'
    assert masked(traceback, found) == f'File "{job}/train.py", line 3, in train\n  connect(password="***")'
