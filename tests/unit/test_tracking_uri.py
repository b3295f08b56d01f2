"""The MLflow tracking URI every process of a run reads: a relative sqlite file made absolute."""

import pytest

from raytrain_orch.core.errors import ConfigError
from raytrain_orch.core.tracking_uri import resolve_tracking_uri


def test_a_relative_sqlite_file_is_made_absolute_and_other_uris_stay(tmp_path):
    assert resolve_tracking_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_tracking_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    assert resolve_tracking_uri("http://head:5000") == "http://head:5000"


def test_a_path_that_is_not_a_uri_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="is not a URI; use sqlite:///mlflow.db or http://HOST:5000"):
        resolve_tracking_uri("mlflow.db")
