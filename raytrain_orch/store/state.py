"""The durable run record: ``runs/RUN_ID/state.json`` and the run's append-only event log.

``state.json`` is rewritten atomically on every change that resume needs; the event log
(``store.eventlog``: ``events.jsonl``, or segments on an object store) records every event with
a timestamp, and is flushed before each save, so the saved state is never ahead of the durable
events. Both are written by the driver only, so there is one writer per run.
"""

from __future__ import annotations

import builtins
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Mapping, cast

from raytrain_orch.core import constants
from raytrain_orch.core.errors import RunNotFoundError, StorageError
from raytrain_orch.core.event_fields import Record
from raytrain_orch.core.events import decode, encode
from raytrain_orch.store import eventlog
from raytrain_orch.store.eventlog import EventLog
from raytrain_orch.store.storage import Storage, safe_name


class Status(str, Enum):
    PENDING = "PENDING"
    WAITING = "WAITING"  # started, waiting in the admission queue for its whole gang
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    CACHED = "CACHED"  # not run: an identical earlier result (same cache key) was reused
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"  # not run because an upstream step failed
    KILLED = "KILLED"

    @property
    def terminal(self) -> bool:
        return self not in (Status.PENDING, Status.WAITING, Status.RUNNING)

    @property
    def active(self) -> bool:
        """An attempt is under way (waiting for its gang or running)."""
        return self in (Status.WAITING, Status.RUNNING)

    @property
    def done(self) -> bool:
        """The step's output is there for downstream steps."""
        return self in (Status.SUCCEEDED, Status.CACHED)


@dataclass
class StepState:
    status: Status = Status.PENDING
    kind: str = "task"
    cache_key: str = ""
    attempts: int = 0
    started_at: float | None = None
    ended_at: float | None = None
    artifact: dict[str, Any] | None = None
    mlflow_run_id: str | None = None
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    waiting: str | None = None  # why the attempt waits for resources, while it does
    preemptions: int = 0  # attempts that ended preempted (their checkpoint kept): not failures
    items: int | None = None  # a mapped step: how many items it runs over (its units are STEP[i])
    parent: str | None = None  # an item's unit: the mapped step it belongs to
    item: Any = None  # an item's unit: its item (a JSON value) and its place in the list
    item_index: int | None = None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.ended_at or time.time()) - self.started_at


@dataclass
class RunState:
    run_id: str
    name: str
    pipeline: str
    config_hash: str
    status: Status = Status.PENDING
    created_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    driver: dict[str, Any] = field(default_factory=lambda: this_driver())
    mlflow: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, StepState] = field(default_factory=dict)
    error: str | None = None
    #: When ``rto gc`` removed the run's checkpoints and artifacts (``at``) and how many bytes in
    #: all (``freed_bytes``); None while they are there. The record itself stays.
    collected: dict[str, Any] | None = None

    @property
    def duration_s(self) -> float:
        return (self.ended_at or time.time()) - self.created_at

    def driver_alive(self) -> bool:
        """Whether the driver that runs this run still exists (on another host: assumed so)."""
        if self.driver.get("host") != socket.gethostname():
            return True
        import psutil

        try:
            process = psutil.Process(int(self.driver["pid"]))
            started = self.driver.get("process_started_at")
            # Another process that got the dead driver's pid is not the driver.
            if process.status() == psutil.STATUS_ZOMBIE:  # dead, not yet reaped by its parent
                return False
            return started is None or abs(process.create_time() - float(started)) < 1.0
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:
            return True

    @property
    def shown_status(self) -> str:
        """The status to show: a RUNNING run whose driver is gone is INTERRUPTED (resumable)."""
        if self.status is Status.RUNNING and not self.driver_alive():
            return "INTERRUPTED"
        return self.status.value

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (shallow: serialise it before the state changes again). Not
        ``dataclasses.asdict``, whose deep copy made saving a 200-step run's record cost ~10 ms."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["steps"] = {
            name: {f.name: getattr(step, f.name) for f in fields(step)} for name, step in self.steps.items()
        }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunState":
        values = dict(data)
        values["status"] = Status(values["status"])
        values["steps"] = {
            name: StepState(**{**s, "status": Status(s["status"])}) for name, s in values["steps"].items()
        }
        return cls(**values)


def this_driver() -> dict[str, Any]:
    """Who is driving: this host and process, when the process started, and the Ray job it is."""
    import psutil

    driver = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_started_at": round(psutil.Process().create_time(), 3),
    }
    job = ray_job_id()
    return {**driver, "ray_job_id": job} if job else driver


def ray_job_id() -> str | None:
    """The submission id when this driver runs as a Ray job (``rto submit``, ``ray job submit``), else None.

    Ray's job supervisor hands the driver its job config, metadata included, in this variable.
    """
    try:
        job_config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    except json.JSONDecodeError:
        return None
    return (job_config.get("metadata") or {}).get("job_submission_id") or None


def new_run_id(name: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}-{secrets.token_hex(3)}"


CACHE_DIR = "cache"


def cache_path(step: str, cache_key: str) -> tuple[str, ...]:
    """Where a step's output lives: content-addressed, so any run with the same key reuses it."""
    return (CACHE_DIR, safe_name(step, "step name"), safe_name(cache_key, "cache key"))


class RunStore:
    """Run records below ``STORAGE/runs/``. The event logs it writes stay open until ``close``."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self._logs: dict[str, EventLog] = {}  # the runs this store writes events of
        self._logs_lock = threading.Lock()  # the driver's thread and the tracking outbox's append

    def run_path(self, run_id: str, *parts: str) -> tuple[str, ...]:
        return (constants.RUNS_DIR, safe_name(run_id, "run id"), *parts)

    def save(self, state: RunState) -> None:
        self.flush(state.run_id)  # the events that led to this state are durable first
        # Compact: json's C encoder serves only unindented output, and the record is saved on every state change.
        self.storage.write_json(state.to_dict(), *self.run_path(state.run_id, constants.STATE_FILE), indent=None)

    def load(self, run_id: str) -> RunState:
        path = self.run_path(run_id, constants.STATE_FILE)
        if not self.storage.exists(*path):
            raise RunNotFoundError(f"no run {run_id!r} under {self.storage.root_uri}; `rto runs` lists the runs there")
        try:
            return RunState.from_dict(self.storage.read_json(*path))
        except (KeyError, TypeError, ValueError) as e:
            raise StorageError(
                f"{self.storage.uri(*path)} is not a run record this version understands ({e})"
            ) from None

    def list(self) -> builtins.list[RunState]:
        """Every run, newest first; unreadable records are skipped."""
        runs = []
        for run_id in self.storage.listdir(constants.RUNS_DIR):
            try:
                runs.append(self.load(run_id))
            except (RunNotFoundError, StorageError, FileNotFoundError):
                continue
        return sorted(runs, key=lambda r: r.created_at, reverse=True)

    def latest(self) -> RunState:
        runs = self.list()
        if not runs:
            raise RunNotFoundError(f"no runs under {self.storage.root_uri} yet; start one with `rto run CONFIG`")
        return runs[0]

    def append_event(self, run_id: str, record: Mapping[str, Any]) -> Record:
        """Record an event (built by ``core.events.make``) in the run's event log, stamped with
        when it was recorded and the run's id. On an object store it is written within
        ``EVENTS_FLUSH_S``, or at the next ``save``, ``flush`` or ``close``."""
        stamped = {"ts": time.time(), "run_id": run_id, **record}
        self._log(run_id).append(encode(stamped))
        return cast(Record, stamped)

    def flush(self, run_id: str) -> None:
        """Write the run's buffered events now."""
        with self._logs_lock:
            log = self._logs.get(run_id)
        if log is not None:
            log.flush()

    def close(self) -> None:
        """Write every buffered event and close the event logs."""
        with self._logs_lock:
            logs, self._logs = list(self._logs.values()), {}
        for log in logs:
            log.close()

    def events(self, run_id: str) -> builtins.list[Record]:
        """The run's recorded events, oldest first (any version's: see ``core.events``); with
        those this store has buffered."""
        self.flush(run_id)
        return [decode(line) for line in eventlog.read(self.storage, self.run_path(run_id))]

    def _log(self, run_id: str) -> EventLog:
        with self._logs_lock:
            log = self._logs.get(run_id)
            if log is None:
                log = self._logs[run_id] = EventLog(self.storage, self.run_path(run_id))
            return log
