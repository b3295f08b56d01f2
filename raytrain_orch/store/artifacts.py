"""Typed step outputs, stored under the run's directory and described by a manifest.

A step never receives another step's in-memory objects: it receives an ``Artifact`` — a small
record that points into the storage root — and reads tables (Parquet through pyarrow), files,
metrics or a model checkpoint from there.
"""

from __future__ import annotations

import json
import numbers
import posixpath
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raytrain_orch.store.checkpoint import MANIFEST as CHECKPOINT_MANIFEST
from raytrain_orch.store.checkpoint import SHARDS_DIR
from raytrain_orch.store.storage import Storage

if TYPE_CHECKING:
    import pyarrow.dataset as pads

MANIFEST = "artifact.json"
CHECKPOINT_STATE_FILE = "state.pt"


@dataclass(frozen=True)
class Output:
    """What a task step may return: named tables, scalar metrics, or both.

    Files the step writes into ``ctx.output_dir`` become part of the artifact too. A step may
    also return a bare ``pyarrow.Table`` (stored as table ``data``), a mapping of names to
    tables, a mapping of names to numbers (metrics), or ``None``.

    ``datasets`` are tables too large for one process: each is stored as a directory of
    Parquet files, written in parts and never gathered. A value is a ``ray.data.Dataset``
    (written by Ray Data's own tasks, in parallel) or an iterable of ``pyarrow.RecordBatch``
    or ``pyarrow.Table`` parts (written one part at a time by the step's process). A train
    step streams them to its workers (``@pipeline.train(datasets=...)``).
    """

    tables: Mapping[str, pa.Table] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    datasets: Mapping[str, Any] = field(default_factory=dict)
    #: JSON values (strings, numbers, dicts, lists) a step mapped over this one runs once for each
    #: (``@pipeline.task(map_over=...)``); read back as ``artifact.items``.
    items: Sequence[Any] = ()

    def __post_init__(self) -> None:
        both = sorted(set(self.tables) & set(self.datasets))
        if both:
            raise ValueError(f"{both} named both a table and a dataset; give each output its own name")
        if isinstance(self.items, (str, bytes, Mapping)) or not isinstance(self.items, Sequence):
            raise TypeError(f"items must be a list of JSON values, got {type(self.items).__name__}")
        try:
            json.dumps(list(self.items), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"items must be JSON values (strings, numbers, dicts, lists): {e}") from None

    @classmethod
    def coerce(cls, value: Any, step: str) -> "Output":
        if value is None:
            return cls()
        if isinstance(value, Output):
            return value
        if isinstance(value, pa.Table):
            return cls(tables={"data": value})
        if _ray_dataset(value):
            return cls(datasets={"data": value})
        if isinstance(value, Mapping) and value:
            if all(isinstance(v, pa.Table) for v in value.values()):
                return cls(tables=dict(value))
            if all(_ray_dataset(v) for v in value.values()):
                return cls(datasets=dict(value))
            if all(isinstance(v, numbers.Real) for v in value.values()):
                return cls(metrics={k: float(v) for k, v in value.items()})
        raise TypeError(
            f"step {step!r} returned {type(value).__name__}; return a pyarrow.Table, a ray.data.Dataset, a dict of "
            "either, a dict of numbers (metrics), raytrain_orch.Output(tables=…, datasets=…, metrics=…), or None"
        )


def _ray_dataset(value: Any) -> bool:
    """A ``ray.data.Dataset`` (known by its type, so this package needs no Ray)."""
    return any(c.__module__.startswith("ray.data") and c.__name__ == "Dataset" for c in type(value).__mro__)


@dataclass(frozen=True)
class Artifact:
    """A step's stored output. ``kind`` is ``tables``, ``model``, ``metrics`` or ``files``."""

    step: str
    storage_uri: str
    path: tuple[str, ...]
    kind: str
    tables: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: str | None = None
    datasets: tuple[str, ...] = ()
    items: tuple[Any, ...] = ()  # the JSON values the step returned in ``Output(items=...)``

    @property
    def storage(self) -> Storage:
        return Storage(self.storage_uri)

    @property
    def uri(self) -> str:
        return self.storage.uri(*self.path)

    def read_table(self, name: str = "data") -> pa.Table:
        if name not in self.tables:
            raise KeyError(f"artifact of step {self.step!r} has no table {name!r}; it has {list(self.tables)}")
        return self.storage.read_table(*self.path, f"{name}.parquet")

    def dataset_uri(self, name: str) -> str:
        """Where dataset ``name`` is stored: a directory of Parquet files, for Ray Data
        (``ray.data.read_parquet``) or any Parquet reader."""
        if name not in self.datasets:
            raise KeyError(f"artifact of step {self.step!r} has no dataset {name!r}; it has {list(self.datasets)}")
        return self.storage.uri(*self.path, name)

    def read_dataset(self, name: str) -> pads.Dataset:
        """Dataset ``name`` as a lazy ``pyarrow.dataset.Dataset``: ``to_batches()`` streams it a
        batch at a time, ``count_rows()`` reads only the files' footers."""
        import pyarrow.dataset as pads  # it loads pandas: only for a step that streams a dataset

        self.dataset_uri(name)  # a clear error for a name it does not have
        storage = self.storage
        return pads.dataset(storage.path(*self.path, name), filesystem=storage.fs, format="parquet")

    def file(self, name: str) -> Path:
        """A local path to one of the artifact's files (downloaded when storage is remote)."""
        if name not in self.files:
            raise KeyError(f"artifact of step {self.step!r} has no file {name!r}; it has {list(self.files)}")
        return self.files_dir() / name

    def files_dir(self) -> Path:
        """A local directory holding the artifact's files (downloaded when storage is remote)."""
        return _local(self.storage, (*self.path, "files"))

    def checkpoint_dir(self) -> Path:
        """A local directory holding the model checkpoint of a train step's artifact."""
        if self.checkpoint is None:
            raise ValueError(f"artifact of step {self.step!r} ({self.kind}) holds no checkpoint")
        return _local(Storage(self.checkpoint), ())

    def load_state(self, map_location: str = "cpu") -> dict[str, Any]:
        """The state saved by ``TrainContext.report(..., state=...)`` in the chosen checkpoint, as
        one plain dict on this process. A sharded checkpoint is consolidated: each live object
        reported in its state (``"model"``, ``"optimizer"``) comes back as its whole state dict,
        keyed by parameter name (``model.load_state_dict(state["model"])``), beside the plain
        values."""
        import torch

        directory = self.checkpoint_dir()
        if (directory / SHARDS_DIR).is_dir():
            from raytrain_orch.store.state_dicts import consolidate

            return consolidate(directory, map_location=map_location)
        return torch.load(directory / CHECKPOINT_STATE_FILE, map_location=map_location, weights_only=True)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = list(self.path)
        if not self.items:
            data.pop("items")  # a manifest without items reads as it did before they existed
        else:
            data["items"] = list(self.items)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Artifact":
        values = dict(data)
        for key in ("path", "tables", "files", "datasets", "items"):
            values[key] = tuple(values.get(key, ()))
        return cls(**values)


def missing(artifact: Artifact, present: Mapping[str, int | None], storage: Storage) -> str | None:
    """What of ``artifact`` is gone, in words, or None when it is whole. ``present``: its
    directory's entries on ``storage`` (``Storage.entries``), so nothing is read but one
    listing; a checkpoint's manifest is looked up once (it lives in the run that trained it)."""
    wanted = [f"{name}.parquet" for name in artifact.tables] + [f"files/{name}" for name in artifact.files]
    gone = [name for name in wanted if name not in present]
    gone += [name for name in artifact.datasets if name not in present]  # a dataset: its directory
    if gone:
        return f"{', '.join(gone)} {'is' if len(gone) == 1 else 'are'} missing"
    if artifact.checkpoint is not None and not _checkpoint_there(storage, artifact.checkpoint):
        return f"its checkpoint {artifact.checkpoint} is gone"
    return None


def _checkpoint_there(storage: Storage, checkpoint: str) -> bool:
    """Whether the checkpoint directory still holds its manifest (written last, so it is whole)."""
    path = storage.fs_path(checkpoint)
    fs = storage.fs
    if path is None:  # outside the storage root: open its own filesystem
        fs, path = pafs.FileSystem.from_uri(checkpoint if "://" in checkpoint else f"file://{checkpoint}")
    return fs.get_file_info(posixpath.join(path, CHECKPOINT_MANIFEST)).type == pafs.FileType.File


def write_artifact(
    storage: Storage,
    path: tuple[str, ...],
    step: str,
    output: Output,
    files_dir: Path | None = None,
    checkpoint: str | None = None,
    written: Iterable[str] = (),
) -> Artifact:
    """Store a step's output under ``path`` and write its manifest last. ``written``: datasets of
    ``output`` already stored there (by Ray Data, see ``ray/data.py``)."""
    written = tuple(written)
    for name, table in output.tables.items():
        storage.write_table(table, *path, f"{name}.parquet")
    for name, parts in output.datasets.items():
        if name not in written:
            write_parts(storage, (*path, name), parts, what=f"step {step!r} dataset {name!r}")
    files: tuple[str, ...] = ()
    if files_dir is not None and any(files_dir.iterdir()):
        files = tuple(sorted(p.relative_to(files_dir).as_posix() for p in files_dir.rglob("*") if p.is_file()))
        storage.upload_dir(files_dir, *path, "files")
    kind = "model" if checkpoint else "tables" if output.tables or output.datasets else "files" if files else "metrics"
    artifact = Artifact(
        step=step,
        storage_uri=storage.root_uri,
        path=path,
        kind=kind,
        tables=tuple(output.tables),
        files=files,
        metrics=dict(output.metrics),
        checkpoint=checkpoint,
        datasets=tuple(output.datasets),
        items=tuple(output.items),
    )
    storage.write_json(artifact.to_dict(), *path, MANIFEST)
    return artifact


def write_parts(storage: Storage, path: tuple[str, ...], parts: Iterable[Any], what: str) -> None:
    """Write ``parts`` (record batches or tables, one schema) as ``part-NNNNN.parquet`` files in
    directory ``path``, one part at a time; what an earlier attempt left there goes first."""
    if isinstance(parts, (pa.Table, pa.RecordBatch)) or not isinstance(parts, Iterable):
        raise TypeError(
            f"{what} is a {type(parts).__name__}; a dataset is a ray.data.Dataset or an iterable of pyarrow "
            "RecordBatch/Table parts (a generator), and a whole table goes in Output(tables=...)"
        )
    storage.remove_dir(*path)
    storage.makedirs(*path)
    for index, part in enumerate(parts):
        if not isinstance(part, (pa.Table, pa.RecordBatch)):
            raise TypeError(
                f"{what}: part {index} is a {type(part).__name__}; yield pyarrow RecordBatch or Table parts"
            )
        table = part if isinstance(part, pa.Table) else pa.Table.from_batches([part])
        with storage.fs.open_output_stream(storage.path(*path, f"part-{index:05d}.parquet")) as out:
            pq.write_table(table, out)


def _local(storage: Storage, parts: tuple[str, ...]) -> Path:
    local = storage.local_path(*parts)
    if local is not None:
        return local
    target = Path(tempfile.mkdtemp(prefix="rto-artifact-"))
    storage.download_dir(target, *parts)
    return target
