"""Checkpoint manifests on real files: checksums, damage detection, latest good."""

from __future__ import annotations

import json

import pyarrow.fs as pafs

from raytrain_orch.store.checkpoint import (
    MANIFEST,
    inspect_checkpoint,
    latest_good,
    latest_good_checkpoint,
    list_checkpoints,
    write_manifest,
)

FS = pafs.LocalFileSystem()


def _checkpoint(root, name: str, epoch: int):
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "state.pt").write_bytes(bytes(range(256)) * 40 + bytes([epoch]))
    write_manifest(directory, epoch=epoch, metrics={"val_accuracy": 0.5 + epoch / 100})
    return directory


def test_manifest_holds_epoch_metrics_and_a_checksum_of_every_file(tmp_path):
    directory = _checkpoint(tmp_path, "checkpoint_2026-01-01_00-00-01", 3)
    manifest = json.loads((directory / MANIFEST).read_text())
    assert manifest["epoch"] == 3 and manifest["metrics"]["val_accuracy"] == 0.53
    assert set(manifest["files"]) == {"state.pt"} and len(manifest["files"]["state.pt"]) == 64
    assert not list(directory.glob(".*.tmp"))  # written under a temporary name, then renamed


def test_truncated_or_missing_files_fail_verification(tmp_path):
    good = _checkpoint(tmp_path, "checkpoint_a", 1)
    assert inspect_checkpoint(FS, str(good)).valid
    truncated = _checkpoint(tmp_path, "checkpoint_b", 2)
    (truncated / "state.pt").write_bytes((truncated / "state.pt").read_bytes()[:100])
    info = inspect_checkpoint(FS, str(truncated))
    assert not info.valid and "state.pt fails its sha256 check" in info.problem and info.epoch == 2
    no_manifest = tmp_path / "checkpoint_c"
    no_manifest.mkdir()
    assert "no readable manifest.json" in inspect_checkpoint(FS, str(no_manifest)).problem


def test_latest_good_skips_damaged_newer_checkpoints(tmp_path):
    run = tmp_path / "runs" / "r1" / "checkpoints" / "train-abc123"
    _checkpoint(run, "checkpoint_2026-01-01_00-00-01", 1)
    _checkpoint(run, "checkpoint_2026-01-01_00-00-02", 2)
    newest = _checkpoint(run, "checkpoint_2026-01-01_00-00-03", 3)
    (newest / "state.pt").write_bytes(b"")
    assert [c.epoch for c in list_checkpoints(FS, str(run))] == [3, 2, 1]  # newest first
    good, skipped = latest_good(FS, str(run))
    assert good.epoch == 2 and [s.epoch for s in skipped] == [3]
    assert latest_good(FS, str(run), before="checkpoint_2026-01-01_00-00-02")[0].epoch == 1  # strictly older only
    assert latest_good_checkpoint(str(tmp_path), "r1").epoch == 2
    assert latest_good_checkpoint(str(tmp_path), "r1", step="train").epoch == 2
    assert latest_good_checkpoint(str(tmp_path), "r1", step="other") is None
