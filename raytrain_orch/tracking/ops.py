"""The outbox's operations, one type each: what the driver asks of MLflow, applied in order on
the outbox's thread (``Op.apply``), and ``Ref``, the id of what an operation creates."""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

from raytrain_orch.tracking.tracker import Tracker

#: One ``log_metrics`` call: (metrics, MLflow step, timestamp).
Batch = tuple[Mapping[str, float], int | None, float]


class Ref:
    """An MLflow object the outbox creates (an experiment or a run): its id once it exists."""

    def __init__(self, name: str, known_id: str | None = None):
        self.name, self.id = name, known_id
        self._ready = threading.Event()
        if known_id is not None:
            self._ready.set()

    def resolve(self, object_id: str) -> None:
        self.id = object_id
        self._ready.set()

    def wait(self, timeout_s: float) -> str | None:
        """The id, waiting up to ``timeout_s`` for the outbox to create the object."""
        self._ready.wait(timeout_s)
        return self.id

    def __repr__(self) -> str:
        return f"Ref({self.name!r}, {self.id!r})"


def _created(ref: Ref) -> str:
    if ref.id is None:
        raise RuntimeError(f"run {ref.name!r} was never created")
    return ref.id


class Op:
    """An operation on the tracking store, on the run ``ref`` (None for a ``Call``); ``kind``
    names it in the run's events."""

    kind: ClassVar[str] = "op"
    ref: Ref | None

    def apply(self, store: Tracker) -> None:
        raise NotImplementedError


@dataclass
class CreateExperiment(Op):
    kind: ClassVar[str] = "experiment"
    ref: Ref

    def apply(self, store: Tracker) -> None:
        self.ref.resolve(store.experiment_id(self.ref.name))


@dataclass
class StartRun(Op):
    kind: ClassVar[str] = "start_run"
    ref: Ref
    experiment: Ref
    tags: dict[str, str]
    parent: Ref | None = None
    params: dict[str, Any] | None = None  # logged in the same operation: no run is left without them

    def apply(self, store: Tracker) -> None:
        parent = self.parent.id if self.parent is not None else None
        if self.experiment.id is None or (self.parent is not None and parent is None):
            raise RuntimeError(f"run {self.ref.name!r}: its experiment or parent run was never created")
        if self.ref.id is None:  # not created by an earlier try that failed after the request
            self.ref.resolve(store.start_run(self.experiment.id, self.ref.name, self.tags, parent_id=parent))
        if self.params:
            store.log_params(_created(self.ref), self.params)


@dataclass
class ReopenRun(Op):
    kind: ClassVar[str] = "reopen_run"
    ref: Ref

    def apply(self, store: Tracker) -> None:
        store.reopen_run(_created(self.ref))


@dataclass
class LogParams(Op):
    kind: ClassVar[str] = "params"
    ref: Ref
    params: dict[str, Any]

    def apply(self, store: Tracker) -> None:
        store.log_params(_created(self.ref), self.params)


@dataclass
class LogMetrics(Op):
    kind: ClassVar[str] = "metrics"
    ref: Ref
    batches: list[Batch] = field(default_factory=list)

    def apply(self, store: Tracker) -> None:
        store.log_metric_batches(_created(self.ref), self.batches)


@dataclass
class SetTags(Op):
    kind: ClassVar[str] = "tags"
    ref: Ref
    tags: dict[str, str]

    def apply(self, store: Tracker) -> None:
        store.set_tags(_created(self.ref), self.tags)


@dataclass
class LogText(Op):
    kind: ClassVar[str] = "text"
    ref: Ref
    text: str
    name: str

    def apply(self, store: Tracker) -> None:
        store.log_text(_created(self.ref), self.text, self.name)


@dataclass
class LogFiles(Op):
    """The file or directory ``produce()`` returns, made on the outbox's thread (drawing a chart
    or fetching an output costs the run nothing); ``cleanup`` removes it once logged."""

    kind: ClassVar[str] = "files"
    ref: Ref
    produce: Callable[[], str | Path | None]
    artifact_path: str | None = None
    cleanup: bool = False
    path: str | Path | None = None  # what ``produce`` made, kept so a retry logs it without producing it again

    def apply(self, store: Tracker) -> None:
        run_id = _created(self.ref)
        self.path = self.path or self.produce()
        if self.path is None:
            return
        path = Path(self.path)
        if path.is_dir():
            store.log_artifacts(run_id, path, self.artifact_path)
        else:
            store.log_artifact(run_id, path, self.artifact_path)
        if self.cleanup:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


@dataclass
class EndRun(Op):
    kind: ClassVar[str] = "end_run"
    ref: Ref
    status: str

    def apply(self, store: Tracker) -> None:
        store.end_run(_created(self.ref), self.status)


@dataclass
class Call(Op):
    """Any other tracking work, in order with the rest."""

    kind: ClassVar[str] = "call"
    fn: Callable[[Tracker], Any]
    ref: None = None

    def apply(self, store: Tracker) -> None:
        self.fn(store)
