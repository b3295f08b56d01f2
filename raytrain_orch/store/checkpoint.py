"""Checkpoints as first-class objects: a manifest with checksums, verification, latest-good lookup.

Ray Train writes and retains checkpoints (``CheckpointConfig``: newest N or best N by a
metric) under ``STORAGE/runs/RUN_ID/checkpoints/STEP-KEY/checkpoint_<timestamp>/``. Each one
this project writes holds ``state.pt`` and ``manifest.json``: epoch, metrics, framework
versions and the sha256 of every other file. The manifest is written last, under a temporary
name then renamed, so a checkpoint without a readable manifest is incomplete. A checkpoint
whose files do not match their checksums (truncated, corrupted) is never restored from: the
newest one that verifies is used instead.
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
_CHUNK = 1 << 20


@dataclass(frozen=True)
class CheckpointInfo:
    path: str
    epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    valid: bool = False
    problem: str = ""

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)


def train_run_name(step: str, cache_key: str) -> str:
    """Ray Train's run name for one step and cache key (a retry or resume of it continues there)."""
    return f"{step}-{cache_key[:12]}"


def step_of(train_run: str) -> str:
    """The step a Ray Train run directory belongs to (the inverse of ``train_run_name``)."""
    return train_run.rsplit("-", 1)[0]


def write_manifest(directory: str | Path, **fields: Any) -> dict[str, Any]:
    """Checksum every file in ``directory`` and write the manifest last, atomically."""
    directory = Path(directory)
    files = {
        p.relative_to(directory).as_posix(): _sha256_local(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {**fields, "files": files}
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(tmp, directory / MANIFEST)
    return manifest


def inspect_checkpoint(fs: pafs.FileSystem, path: str) -> CheckpointInfo:
    """Read a checkpoint's manifest and verify every file against its checksum."""
    try:
        with fs.open_input_stream(posixpath.join(path, MANIFEST)) as src:
            manifest = json.loads(src.read())
    except (OSError, ValueError) as e:
        return CheckpointInfo(path, problem=f"no readable {MANIFEST} ({e.__class__.__name__})")
    info = dict(path=path, epoch=manifest.get("epoch"), metrics=manifest.get("metrics", {}))
    for name, expected in manifest.get("files", {}).items():
        try:
            actual = _sha256(fs, posixpath.join(path, name))
        except OSError:
            return CheckpointInfo(**info, problem=f"{name} is missing")
        if actual != expected:
            return CheckpointInfo(**info, problem=f"{name} fails its sha256 check (truncated or corrupted)")
    return CheckpointInfo(**info, valid=True)


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
