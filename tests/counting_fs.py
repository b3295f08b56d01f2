"""A pyarrow filesystem that counts the bytes written through it, wrapped around a real one.

Wrapped around a local directory it is also an object store for the code under test: it is no
``LocalFileSystem``, so ``Storage`` writes whole objects to it and never appends.

    storage = Storage(root)
    counting = count_writes(storage)   # storage.fs now counts; counting.written(prefix) → bytes
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from raytrain_orch.store.storage import Storage


class CountingHandler(pafs.FileSystemHandler):
    def __init__(self, fs: pafs.FileSystem):
        self.fs = fs
        self.bytes: dict[str, int] = defaultdict(int)  # path → bytes written to it, every write summed
        self._lock = threading.Lock()

    def written(self, containing: str) -> int:
        """Bytes written to every path that contains ``containing``."""
        with self._lock:
            return sum(n for path, n in self.bytes.items() if containing in path)

    def _count(self, path: str, n: int) -> None:
        with self._lock:
            self.bytes[path] += n

    def open_output_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return pa.PythonFile(_CountingWriter(self.fs.open_output_stream(path, metadata=metadata), path, self), "w")

    def open_append_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return pa.PythonFile(_CountingWriter(self.fs.open_append_stream(path, metadata=metadata), path, self), "w")

    # everything else as the wrapped filesystem does it
    def get_type_name(self) -> str:
        return f"counting-{self.fs.type_name}"

    def equals(self, other: Any) -> bool:
        return isinstance(other, CountingHandler) and other.fs.equals(self.fs)

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        self.fs.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self.fs.open_input_file(path)


class _CountingWriter:
    """A writable file object over a pyarrow output stream, counting what goes through it."""

    def __init__(self, stream: pa.NativeFile, path: str, counter: CountingHandler):
        self.stream, self.path, self.counter = stream, path, counter
        self.closed = False

    def write(self, data: Any) -> int:
        n = self.stream.write(data)
        self.counter._count(self.path, n)
        return n

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self.stream.flush()

    def tell(self) -> int:
        return self.stream.tell()

    def close(self) -> None:
        if not self.closed:
            self.stream.close()
            self.closed = True


def count_writes(storage: Storage) -> CountingHandler:
    """Make ``storage`` write through a counting wrapper of its filesystem; the wrapper."""
    handler = CountingHandler(storage.fs)
    storage.fs = pafs.PyFileSystem(handler)
    return handler
