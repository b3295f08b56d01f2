"""Names a user types cannot reach outside the storage root: the CLI refuses them in one line."""

from __future__ import annotations

import pytest

from raytrain_orch.cli import main


@pytest.mark.parametrize("command", ["status", "resume", "checkpoints", "logs"])
@pytest.mark.parametrize("run_id", ["../../etc", "/etc/passwd", "runs/../../x", ".."])
def test_a_run_id_that_escapes_the_storage_root_is_refused(tmp_path, capsys, command, run_id):
    (tmp_path / "outside").mkdir()

    assert main([command, run_id, "--storage", str(tmp_path / "rto-runs")]) == 2

    error = capsys.readouterr().err.strip()
    assert error.startswith(f"rto: error: run id {run_id!r} is not a safe name") and "\n" not in error
    assert not (tmp_path / "rto-runs").exists()  # nothing was created on the way
