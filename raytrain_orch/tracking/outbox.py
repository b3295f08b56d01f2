"""The driver's MLflow writer: tracking operations applied in order, off the run's path.

Every call returns at once with, where the operation creates something, a ``Ref`` that holds
its id once it exists. One background thread applies the operations; while the store is
unreachable it retries the operation at hand with backoff and tells the run once when MLflow
went away and once when it is back, with the backlog stored. So an MLflow outage never stops
training, and nothing logged during it is lost.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from raytrain_orch.core.events import Event
from raytrain_orch.core.text import gist
from raytrain_orch.tracking.ops import (
    Call,
    CreateExperiment,
    EndRun,
    LogFiles,
    LogMetrics,
    LogParams,
    LogText,
    Op,
    Ref,
    ReopenRun,
    SetTags,
    StartRun,
)
from raytrain_orch.tracking.tracker import Tracker, transient

log = logging.getLogger(__name__)


class Outbox:
    """The driver's MLflow writer. Every call returns at once; a background thread applies the
    operations in order (consecutive metric batches of a run merged into one request).

    While the store is unreachable, the operation at hand is retried with backoff (1 s doubling
    to ``max_backoff_s``); ``on_note`` is told once when MLflow becomes unreachable and once when
    it is back and the backlog is stored, so the run can say so. Nothing is dropped unless
    MLflow rejects the operation itself, or ``close`` runs out of time.
    """

    def __init__(
        self,
        tracking_uri: str,
        on_note: Callable[..., None] | None = None,
        max_backoff_s: float = 10.0,
        connect: Callable[[str], Tracker] = Tracker,
    ):
        # Fail fast inside MLflow's HTTP client: the outbox does the retrying, and says so.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self.tracking_uri = tracking_uri
        self.on_note = on_note or (lambda event, **fields: log.warning("%s %s", event, fields))
        self._max_backoff_s = max_backoff_s
        self._connect = connect
        self._store: Tracker | None = None
        self._queue: queue.SimpleQueue[Op | None] = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="rto-mlflow-outbox", daemon=True)
        self._thread.start()

    # --- operations -------------------------------------------------------------------------
    def experiment(self, name: str) -> Ref:
        ref = Ref(name)
        self._put(CreateExperiment(ref))
        return ref

    def start_run(
        self,
        experiment: Ref,
        name: str,
        tags: Mapping[str, str],
        parent: Ref | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Ref:
        ref = Ref(name)
        self._put(StartRun(ref, experiment, dict(tags), parent, dict(params) if params else None))
        return ref

    def reopen_run(self, ref: Ref) -> None:
        self._put(ReopenRun(ref))

    def log_params(self, ref: Ref, params: Mapping[str, Any]) -> None:
        self._put(LogParams(ref, dict(params)))

    def log_metrics(
        self, ref: Ref, metrics: Mapping[str, float], step: int | None = None, ts: float | None = None
    ) -> None:
        if metrics:
            self._put(LogMetrics(ref, [(dict(metrics), step, ts or time.time())]))

    def set_tags(self, ref: Ref, tags: Mapping[str, str]) -> None:
        self._put(SetTags(ref, {k: str(v) for k, v in tags.items()}))

    def log_text(self, ref: Ref, text: str, name: str) -> None:
        self._put(LogText(ref, text, name))

    def log_files(
        self,
        ref: Ref,
        produce: Callable[[], str | Path | None],
        artifact_path: str | None = None,
        cleanup: bool = False,
    ) -> None:
        """Log the file or directory ``produce()`` returns (called on the outbox thread, so
        drawing a chart or downloading an output costs the run nothing); ``cleanup`` removes it after."""
        self._put(LogFiles(ref, produce, artifact_path, cleanup))

    def end_run(self, ref: Ref, status: str) -> None:
        self._put(EndRun(ref, status))

    def call(self, fn: Callable[[Tracker], Any]) -> None:
        """Any other tracking work, in order with the rest."""
        self._put(Call(fn))

    # --- control ----------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every operation so far is applied; False if ``timeout_s`` passed first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._lock.wait(left if left is None else min(left, 1.0))
        return True

    def close(self, timeout_s: float) -> int:
        """Flush for up to ``timeout_s`` and stop; returns how many operations were not stored."""
        self.flush(timeout_s)
        with self._lock:
            self._closing = True
            left = self._pending
        self._queue.put(None)
        return left

    # --- the thread -------------------------------------------------------------------------
    def _put(self, op: Op) -> None:
        with self._lock:
            self._pending += 1
        self._queue.put(op)

    def _work(self) -> None:
        self._warm()
        # Ray runs its workers at niceness 15 (RAY_worker_niceness) so that the driver stays
        # responsive; this thread's SQLite and HTTP work would then take the CPUs from training.
        # Linux gives each thread its own niceness: this one yields to the workers.
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        backlog: list[Op] = []
        while True:
            if not backlog:
                item = self._queue.get()
                if item is None:
                    self._close_store()
                    return
                backlog.append(item)
            while True:  # take what else is queued, to merge metric batches
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                backlog.append(item)
            op, merged = _merge(backlog)
            try:
                self._apply_with_retry(op)
            except Exception as error:  # noqa: BLE001 — a bad operation must not stop the rest
                if not self._closing:  # (past close's deadline, what is left is counted as lost instead)
                    self.on_note(
                        Event.TRACKING_DROPPED,
                        operation=op.kind,
                        run=getattr(op.ref, "name", None),
                        error=f"{type(error).__name__}: {gist(error)}",
                    )
            del backlog[:merged]
            with self._lock:
                self._pending -= merged
                self._lock.notify_all()

    def _close_store(self) -> None:
        close = getattr(self._store, "close", None)  # a store in a process of its own (``store_process``)
        if close is not None:
            close()

    def _warm(self) -> None:
        """Load MLflow and open its store now, while the driver connects to Ray, rather than
        when the run's first operation arrives. A store that is down is the operations' business."""
        try:
            store = self._connect(self.tracking_uri)
            warm = getattr(store, "warm", None)
            if warm is not None:
                warm()
            self._store = store
        except Exception:  # noqa: BLE001 — retried, and reported, by the first operation
            log.debug("MLflow not ready at start", exc_info=True)

    def _apply_with_retry(self, op: Op) -> None:
        delay, down_since = 1.0, None
        while True:
            try:
                if self._store is None:
                    self._store = self._connect(self.tracking_uri)
                op.apply(self._store)
            except Exception as error:
                if not transient(error) or self._closing:
                    raise
                if down_since is None:
                    down_since = time.time()
                    self.on_note(
                        Event.TRACKING_UNAVAILABLE, uri=self.tracking_uri, error=gist(error), queued=self.pending
                    )
                time.sleep(delay)
                delay = min(delay * 2, self._max_backoff_s)
                continue
            if down_since is not None:
                self.on_note(
                    Event.TRACKING_RECOVERED,
                    uri=self.tracking_uri,
                    down_s=round(time.time() - down_since, 1),
                    queued=self.pending,
                )
            return


def _merge(backlog: list[Op]) -> tuple[Op, int]:
    """The next operation to apply, and how many queued operations it stands for: consecutive
    metric batches of one run become one."""
    first = backlog[0]
    if not isinstance(first, LogMetrics):
        return first, 1
    count, batches = 1, list(first.batches)
    while count < len(backlog) and len(batches) < 200:
        following = backlog[count]
        if not isinstance(following, LogMetrics) or following.ref is not first.ref:
            break
        batches.extend(following.batches)
        count += 1
    return LogMetrics(first.ref, batches), count
