"""Shared fixtures of the unit tests: no Ray, no MLflow, nothing written inside the repo."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DIGITS_YAML = REPO / "configs" / "digits.yaml"
DIGITS_GPU_YAML = REPO / "configs" / "digits_gpu.yaml"


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from the repo root, where ``pipeline: jobs.digits:pipeline`` is importable."""
    monkeypatch.chdir(REPO)
    return REPO


@pytest.fixture
def isolated(tmp_path: Path) -> list[str]:
    """``--set`` overrides that point storage and MLflow tracking into ``tmp_path``."""
    return [f"storage={tmp_path / 'runs'}", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]


@pytest.fixture
def digits_raw() -> dict:
    """configs/digits.yaml as a plain dict, to mutate and write elsewhere."""
    return yaml.safe_load(DIGITS_YAML.read_text())


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
