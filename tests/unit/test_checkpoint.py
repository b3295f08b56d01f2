"""Checkpoint manifests on real files: checksums, damage detection, latest good."""

from __future__ import annotations

import json
import shutil

import pyarrow.fs as pafs

from raytrain_orch.store.checkpoint import (
    MANIFEST,
    SHARDED,
    SHARDS_DIR,
    VALUES_FILE,
    inspect_checkpoint,
    latest_good,
    latest_good_checkpoint,
    list_checkpoints,
    rank_manifest,
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


# --- the sharded layout: every rank's files, under its own manifest -----------------------------


def _sharded(root, name: str, epoch: int, world_size: int = 2):
    """A sharded checkpoint as Ray Train merges it: each rank's files and manifest, one directory."""
    directory = root / name
    for rank in range(world_size):
        staging = root / f"staging-{name}-{rank}"
        (staging / SHARDS_DIR).mkdir(parents=True)
        (staging / SHARDS_DIR / f"__{rank}_0.distcp").write_bytes(bytes([rank, epoch]) * 500)
        fields = {"epoch": epoch, "layout": SHARDED, "world_size": world_size} if rank == 0 else {"rank": rank}
        if rank == 0:
            (staging / SHARDS_DIR / ".metadata").write_bytes(b"metadata")
            (staging / VALUES_FILE).write_bytes(b"values")
        write_manifest(staging, name=rank_manifest(rank), **fields)
        shutil.copytree(staging, directory, dirs_exist_ok=True)
    return directory


def test_a_sharded_checkpoint_verifies_every_ranks_files_under_its_own_manifest(tmp_path):
    directory = _sharded(tmp_path, "checkpoint_a", epoch=4)
    assert set(json.loads((directory / "manifest.rank-00001.json").read_text())["files"]) == {"shards/__1_0.distcp"}
    assert set(json.loads((directory / MANIFEST).read_text())["files"]) == {
        "shards/.metadata",
        "shards/__0_0.distcp",
        VALUES_FILE,
    }
    info = inspect_checkpoint(FS, str(directory))
    assert info.valid and info.sharded and info.world_size == 2 and info.epoch == 4


def test_a_sharded_checkpoint_missing_a_ranks_shard_or_with_a_truncated_one_is_invalid(tmp_path):
    missing = _sharded(tmp_path, "checkpoint_a", epoch=1)
    (missing / "manifest.rank-00001.json").unlink()  # rank 1's upload never finished
    info = inspect_checkpoint(FS, str(missing))
    assert not info.valid and "rank 1's shard is missing" in info.problem

    truncated = _sharded(tmp_path, "checkpoint_b", epoch=2)
    shard = truncated / SHARDS_DIR / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:10])
    info = inspect_checkpoint(FS, str(truncated))
    assert not info.valid and "shards/__1_0.distcp fails its sha256 check" in info.problem

    gone = _sharded(tmp_path, "checkpoint_c", epoch=3)
    (gone / SHARDS_DIR / "__0_0.distcp").unlink()
    assert inspect_checkpoint(FS, str(gone)).problem == "shards/__0_0.distcp is missing"


def test_latest_good_falls_back_past_a_damaged_sharded_checkpoint(tmp_path):
    run = tmp_path / "train-abc123"
    _sharded(run, "checkpoint_2026-01-01_00-00-01", 1)
    newest = _sharded(run, "checkpoint_2026-01-01_00-00-02", 2)
    (newest / SHARDS_DIR / "__1_0.distcp").write_bytes(b"")
    good, skipped = latest_good(FS, str(run))
    assert good.epoch == 1 and good.sharded and [s.epoch for s in skipped] == [2]
