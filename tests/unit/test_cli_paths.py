"""Names a user types cannot reach outside the storage root: the CLI refuses them in one line."""

from __future__ import annotations

import pytest

from raytrain_orch.cli.main import main

from .conftest import REPO

UNSAFE = ["../../etc", "/etc/passwd", "runs/../../x", ".."]


@pytest.mark.parametrize("command", ["status", "resume", "checkpoints", "logs", "stop"])
@pytest.mark.parametrize("run_id", UNSAFE)
def test_a_run_id_that_escapes_the_storage_root_is_refused(tmp_path, capsys, monkeypatch, command, run_id):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a local run id, not a cluster's
    (tmp_path / "outside").mkdir()

    assert main([command, run_id, "--storage", str(tmp_path / "rto-runs")]) == 2

    error = capsys.readouterr().err.strip()
    assert error.startswith(f"rto: error: run id {run_id!r} is not a safe name") and "\n" not in error
    assert not (tmp_path / "rto-runs").exists()  # nothing was created on the way


@pytest.mark.parametrize("run_id", UNSAFE)
def test_a_new_run_id_that_escapes_the_storage_root_is_refused_before_anything_runs(tmp_path, capsys, run_id):
    storage = tmp_path / "rto-runs"
    argv = ["run", str(REPO / "tests/pipelines/secretive.yaml"), "--run-id", run_id, "--set", f"storage={storage}"]

    assert main(argv) == 2

    error = capsys.readouterr().err.strip()
    assert error.startswith(f"rto: error: run id {run_id!r} is not a safe name") and "\n" not in error
    assert not storage.exists()
