"""The storage root: any pyarrow filesystem URI (a local path, ``s3://…``, ``gs://…``).

Artifacts, checkpoints, run state and events live here, so workers on any node share them.
Writes of whole files are atomic: a temporary name then a rename on filesystems that have
one, a single PUT on object stores (which is atomic there).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import uuid
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raytrain_orch.core.errors import StorageError

#: Stores whose directories are only key prefixes: an object is written without making its
#: parents first, which would cost a request per level (35 ms a write against 22 on moto's S3).
_PREFIX_STORES = frozenset({"s3", "gcs"})


def safe_name(value: str, what: str) -> str:
    """Reject names that could escape the storage root (``..``, separators, absolute paths)."""
    if not value or value in (".", "..") or "/" in value or "\\" in value or value.startswith("~"):
        raise StorageError(
            f"{what} {value!r} is not a safe name: use letters, digits, '-', '_' or '.', with no path separators"
        )
    return value


class Storage:
    """Paths below one root URI, reached through a pyarrow filesystem."""

    def __init__(self, root: str):
        self.root_uri = _absolute(root)
        try:
            self.fs, self.base = pafs.FileSystem.from_uri(self.root_uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
            raise StorageError(f"storage {root!r}: {e}; use a local path or a URI such as s3://bucket/prefix") from None

    @property
    def _local(self) -> bool:
        """Whether files here can be appended to and renamed (any other filesystem is treated as
        an object store: whole objects, each written once)."""
        return isinstance(self.fs, pafs.LocalFileSystem)

    def __reduce__(self):
        return (Storage, (self.root_uri,))

    # paths ------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """The filesystem path of ``parts`` below the root."""
        return posixpath.join(self.base, *parts)

    def uri(self, *parts: str) -> str:
        """A URI for ``parts`` that other processes (Ray Train, workers) can open."""
        if self._local:
            return self.path(*parts)
        return posixpath.join(self.root_uri, *parts)

    def local_path(self, *parts: str) -> Path | None:
        """The local path of ``parts`` when the root is on a local filesystem, else None."""
        return Path(self.path(*parts)) if self._local else None

    # files ------------------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def makedirs(self, *parts: str) -> None:
        self.fs.create_dir(self.path(*parts), recursive=True)

    def listdir(self, *parts: str) -> list[str]:
        selector = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        return sorted(posixpath.basename(info.path) for info in self.fs.get_file_info(selector))

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write a whole file atomically."""
        self.write_chunks([data], *parts)

    def write_chunks(self, chunks: Iterable[bytes], *parts: str) -> int:
        """Write a whole file atomically from ``chunks``, holding one at a time; return its size."""
        target = self.path(*parts)
        if self.fs.type_name not in _PREFIX_STORES:
            self.fs.create_dir(posixpath.dirname(target), recursive=True)
        size = 0
        if not self._local:
            with self.fs.open_output_stream(target) as out:
                for chunk in chunks:
                    size += out.write(chunk)
            return size
        tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as out:
                for chunk in chunks:
                    size += out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            # A failed write leaves the previous file as it was and no stray temporary behind.
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise
        return size

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as src:
            return src.read()

    def write_json(self, value: Any, *parts: str, indent: int | None = 2) -> None:
        self.write_bytes(json.dumps(value, indent=indent, default=str).encode(), *parts)

    def read_json(self, *parts: str) -> Any:
        try:
            return json.loads(self.read_bytes(*parts))
        except json.JSONDecodeError as e:
            raise StorageError(f"{self.uri(*parts)} is not valid JSON ({e}); the file is damaged") from None

    # tables -----------------------------------------------------------------------------
    def write_table(self, table: pa.Table, *parts: str) -> None:
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self.write_bytes(buffer.getvalue(), *parts)

    def read_table(self, *parts: str) -> pa.Table:
        return pq.read_table(self.path(*parts), filesystem=self.fs)

    def remove_file(self, *parts: str) -> None:
        """Remove a file; nothing when it is not there."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path(*parts))

    # directories ------------------------------------------------------------------------
    def remove_dir(self, *parts: str) -> None:
        """Remove a directory and what it holds; nothing when it is not there."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_dir(self.path(*parts))

    def entries(self, *parts: str) -> dict[str, int | None]:
        """Everything below directory ``parts``, from one recursive listing: each path relative
        to it, with a file's size in bytes (None for a directory); empty when it is not there."""
        base = self.path(*parts)
        selector = pafs.FileSelector(base, allow_not_found=True, recursive=True)
        return {
            posixpath.relpath(info.path, base): info.size if info.type == pafs.FileType.File else None
            for info in self.fs.get_file_info(selector)
        }

    def tree_size(self, *parts: str) -> int:
        """The bytes of every file below directory ``parts`` (0 when it is not there)."""
        return sum(size or 0 for size in self.entries(*parts).values())

    def fs_path(self, uri: str) -> str | None:
        """The filesystem path of ``uri`` (a path, or a URI such as Ray Train's checkpoint
        paths) when it lies below this root, else None."""
        path = uri.split("://", 1)[1].split("?", 1)[0] if "://" in uri else uri
        path = posixpath.normpath(path)
        base = posixpath.normpath(self.base)
        return path if path == base or path.startswith(base.rstrip("/") + "/") else None

    def upload_dir(self, local_dir: str | Path, *parts: str) -> None:
        self.makedirs(*parts)
        pafs.copy_files(
            str(local_dir), self.path(*parts), source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs
        )

    def download_dir(self, local_dir: str | Path, *parts: str) -> None:
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        pafs.copy_files(
            self.path(*parts), str(local_dir), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem()
        )


def _absolute(root: str) -> str:
    if "://" in root:
        return root
    return str(Path(root).expanduser().resolve())
