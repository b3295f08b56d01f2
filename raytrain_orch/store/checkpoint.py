"""Checkpoints as first-class objects: a manifest with checksums, verification, latest-good lookup.

Ray Train writes and retains checkpoints (``CheckpointConfig``: newest N or best N by a
metric) under ``STORAGE/runs/RUN_ID/checkpoints/STEP-KEY/checkpoint_<timestamp>/``. A checkpoint
has one of two layouts:

- whole state: ``state.pt`` (rank 0's ``torch.save`` of the state) and ``manifest.json``;
- sharded: ``shards/`` (``torch.distributed.checkpoint``: ``.metadata`` and one
  ``__RANK_0.distcp`` per rank), ``values.pt`` (the state's plain values), ``manifest.json``
  (rank 0's, with ``"layout": "sharded"`` and the world size) and one
  ``manifest.rank-NNNNN.json`` per other rank, each listing the files that rank wrote.

A manifest holds the epoch, metrics, framework versions and the sha256 of every file its rank
wrote. It is written last, under a temporary name then renamed, so a checkpoint without a
readable manifest is incomplete. A checkpoint with a missing or damaged file, or without the
manifest of each of its ranks, is never restored from: the newest one that verifies is used
instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

MANIFEST = "manifest.json"
#: The sharded layout's files: the ``torch.distributed.checkpoint`` directory and the plain values.
SHARDS_DIR = "shards"
VALUES_FILE = "values.pt"
SHARDED = "sharded"
_CHUNK = 1 << 20


def rank_manifest(rank: int) -> str:
    """The manifest of a sharded checkpoint's files written by ``rank`` (rank 0's is ``MANIFEST``)."""
    return MANIFEST if rank == 0 else f"manifest.rank-{rank:05d}.json"


@dataclass(frozen=True)
class CheckpointInfo:
    path: str
    epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    valid: bool = False
    problem: str = ""
    #: The world size of a sharded checkpoint (every rank wrote its shard); None: a whole-state one.
    world_size: int | None = None

    @property
    def sharded(self) -> bool:
        return self.world_size is not None

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)


def train_run_name(step: str, cache_key: str) -> str:
    """Ray Train's run name for one step and cache key (a retry or resume of it continues there)."""
    return f"{step}-{cache_key[:12]}"


def step_of(train_run: str) -> str:
    """The step a Ray Train run directory belongs to (the inverse of ``train_run_name``)."""
    return train_run.rsplit("-", 1)[0]


def write_manifest(directory: str | Path, name: str = MANIFEST, **fields: Any) -> dict[str, Any]:
    """Checksum every file in ``directory`` and write the manifest ``name`` last, atomically."""
    directory = Path(directory)
    files = {
        p.relative_to(directory).as_posix(): _sha256_local(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not _is_manifest(p.name)
    }
    manifest = {**fields, "files": files}
    tmp = directory / f".{name}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(tmp, directory / name)
    return manifest


def _is_manifest(name: str) -> bool:
    return name.startswith("manifest.") and name.endswith(".json")


def inspect_checkpoint(fs: pafs.FileSystem, path: str) -> CheckpointInfo:
    """Read a checkpoint's manifests (rank 0's, and every other rank's when it is sharded) and
    verify every file against its checksum."""
    try:
        manifest = _read_json(fs, posixpath.join(path, MANIFEST))
    except (OSError, ValueError) as e:
        return CheckpointInfo(path, problem=f"no readable {MANIFEST} ({e.__class__.__name__})")
    world_size = manifest.get("world_size") if manifest.get("layout") == SHARDED else None
    info: dict[str, Any] = dict(
        path=path, epoch=manifest.get("epoch"), metrics=manifest.get("metrics", {}), world_size=world_size
    )
    manifests = [manifest]
    for rank in range(1, world_size or 1):
        try:
            manifests.append(_read_json(fs, posixpath.join(path, rank_manifest(rank))))
        except (OSError, ValueError):
            return CheckpointInfo(**info, problem=f"rank {rank}'s shard is missing (no readable {rank_manifest(rank)})")
    for rank_files in manifests:
        for name, expected in rank_files.get("files", {}).items():
            try:
                actual = _sha256(fs, posixpath.join(path, name))
            except OSError:
                return CheckpointInfo(**info, problem=f"{name} is missing")
            if actual != expected:
                return CheckpointInfo(**info, problem=f"{name} fails its sha256 check (truncated or corrupted)")
    return CheckpointInfo(**info, valid=True)


def _read_json(fs: pafs.FileSystem, path: str) -> dict[str, Any]:
    with fs.open_input_stream(path) as src:
        data = json.loads(src.read())
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds no JSON object")
    return data


def list_checkpoints(fs: pafs.FileSystem, run_dir: str) -> list[CheckpointInfo]:
    """Every checkpoint of one Ray Train run directory, newest first, each verified."""
    selector = pafs.FileSelector(run_dir, allow_not_found=True)
    names = sorted(
        (
            i.path
            for i in fs.get_file_info(selector)
            if i.type == pafs.FileType.Directory and posixpath.basename(i.path).startswith("checkpoint_")
        ),
        reverse=True,  # checkpoint_<timestamp>: the name orders by time
    )
    return [inspect_checkpoint(fs, path) for path in names]


def latest_good(
    fs: pafs.FileSystem, run_dir: str, before: str | None = None
) -> tuple[CheckpointInfo | None, list[CheckpointInfo]]:
    """The newest checkpoint that verifies (older than the one named ``before``, if given), and
    the newer ones skipped because they did not."""
    skipped: list[CheckpointInfo] = []
    for info in list_checkpoints(fs, run_dir):
        if before is not None and info.name >= before:
            continue
        if info.valid:
            return info, skipped
        skipped.append(info)
    return None, skipped


def _sha256_local(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256(fs: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as src:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def latest_good_checkpoint(storage_root: str, run_id: str, step: str | None = None) -> CheckpointInfo | None:
    """The newest checkpoint of run ``run_id`` (of train step ``step``, or any) that verifies."""
    from raytrain_orch.core.constants import RUNS_DIR
    from raytrain_orch.store.storage import Storage, safe_name

    storage = Storage(storage_root)
    base = (RUNS_DIR, safe_name(run_id, "run id"), "checkpoints")
    found = []
    for train_run in storage.listdir(*base):
        if step is None or step_of(train_run) == step:
            good, _ = latest_good(storage.fs, storage.path(*base, train_run))
            if good is not None:
                found.append(good)
    return max(found, key=lambda info: info.name, default=None)
