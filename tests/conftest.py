"""Shared test helpers. Tests run from the repository root so driver programs under jobs/ and
tests/pipelines/ import the way users' do."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _repo_cwd():
    previous = os.getcwd()
    os.chdir(REPO)
    yield
    os.chdir(previous)


@pytest.fixture(scope="session", autouse=True)
def _runtime_home(tmp_path_factory):
    """The suite's own ``RTO_HOME``: the tests that run locally share one local runtime, as a
    user's runs do, and never the user's; it is stopped at the end."""
    previous = os.environ.get("RTO_HOME")
    os.environ["RTO_HOME"] = str(tmp_path_factory.mktemp("rto-home"))
    yield
    from raytrain_orch.ray import runtime

    runtime.stop(force=True)
    if previous is None:
        os.environ.pop("RTO_HOME", None)
    else:
        os.environ["RTO_HOME"] = previous


@pytest.fixture(scope="session")
def s3():
    """moto's S3 server on 127.0.0.1 for the whole session (started when a test first asks)."""
    from tests.object_store import s3_server

    with s3_server() as server:
        yield server


@pytest.fixture(scope="module")
def s3_env(s3):
    """The module's tests, and every process they start, reach ``s3`` by the standard AWS variables."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3.env().items():
            patch.setenv(name, value)
        yield s3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(directory: Path, name: str, pipeline: str, steps: dict, **top) -> Path:
    """A config file whose storage and MLflow store live in ``directory`` (a mount every test
    node shares: they are processes on one machine)."""
    config = {
        "name": name,
        "pipeline": pipeline,
        "storage": str(directory / "rto-runs"),
        "storage_options": {"shared_mount": True},
        "mlflow": {"tracking_uri": f"sqlite:///{directory / 'mlflow.db'}"},
        "steps": steps,
        **top,
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def in_bucket(s3, directory: Path) -> tuple[str, list[str]]:
    """A storage root in a new bucket of ``s3`` (tests/object_store.py), and the ``--set``
    overrides that keep a run's storage there and its MLflow store in ``directory``."""
    storage = f"s3://{s3.bucket()}/rto-runs"
    return storage, [f"storage={storage}", f"mlflow.tracking_uri=sqlite:///{directory / 'mlflow.db'}"]


def isolated(directory: Path) -> list[str]:
    """``--set`` overrides that keep a run's storage and MLflow store inside ``directory``, a
    mount every test node shares (they are processes on one machine)."""
    return [
        f"storage={directory / 'rto-runs'}",
        "storage_options.shared_mount=true",
        f"mlflow.tracking_uri=sqlite:///{directory / 'mlflow.db'}",
    ]


@pytest.fixture(params=["local", "s3"])
def runs(request, tmp_path):
    """Runs of tests/pipelines/retained.py (``tests.retained.Retained``) on a local root and in a bucket."""
    from tests.retained import Retained  # the runner and its pipeline, only for the tests that ask

    if request.param == "local":
        return Retained(str(tmp_path / "runs"), tmp_path)
    s3 = request.getfixturevalue("s3_env")
    return Retained(f"s3://{s3.bucket()}/rto", tmp_path)
