"""A run's event log: what ``RunStore.append_event`` writes and ``RunStore.events`` reads.

It has one writer: the run's driver (or, after the driver died, the ``rto`` command that ends
the run). On a local disk every event is one O_APPEND write of ``runs/RUN/events.jsonl``. An
object store has no append, so there events wait in the writer's memory and go out together as
one new object (``store.segments``): ``EVENTS_FLUSH_S`` after the first of them, at
``EVENTS_FLUSH_COUNT`` of them, or when the writer is told to ``flush`` — before every save of
the run's state, and at its end. Each event is written once, merged at most twice, and never
read back by the writer, so the log costs O(n) in bytes and requests, and the writer holds no
more than the open buffer. A driver killed there loses at most the last ``EVENTS_FLUSH_S`` of
its progress events, never one whose state change was saved.

Readers take ``events.jsonl`` first (the whole log on a local disk; on an object store, the log
of a run recorded before segments), then the segments in order.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from raytrain_orch.core import constants
from raytrain_orch.store import segments
from raytrain_orch.store.segments import Segment
from raytrain_orch.store.storage import Storage

log = logging.getLogger(__name__)

#: How often a reader lists the segments again when one it listed was merged away meanwhile.
_READ_TRIES = 5


class EventLog:
    """The writer of one run's event log (``run_dir``: the run's directory below the root)."""

    def __init__(
        self,
        storage: Storage,
        run_dir: tuple[str, ...],
        *,
        max_age_s: float = constants.EVENTS_FLUSH_S,
        max_events: int = constants.EVENTS_FLUSH_COUNT,
        fan_out: int = segments.FAN_OUT,
        background: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        """``background``: a thread writes the buffer once it is ``max_age_s`` old and merges
        segments; without it the caller does (``flush_if_due``), as a test with its ``clock`` does."""
        self.storage = storage
        self._file: Path | None = storage.local_path(*run_dir, constants.EVENTS_FILE)
        self._dir = (*run_dir, constants.EVENTS_DIR)
        self._max_age_s, self._max_events, self._fan_out = max_age_s, max_events, fan_out
        self._background, self._clock = background, clock
        self._changed = threading.Condition()  # guards the buffer and what the thread is to do
        self._buffer: list[bytes] = []
        self._since: float | None = None  # when the buffer's first event came
        self._compact_due = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._writing = threading.Lock()  # one segment written at a time, in flush order
        self._next: int | None = None  # the next flush's number, once the existing ones are listed

    def append(self, line: str) -> None:
        """Add one line (one encoded event, without its newline)."""
        data = (line + "\n").encode()
        if self._file is not None:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            with open(self._file, "ab") as out:
                out.write(data)  # one write of an O_APPEND file: whole lines, whoever reads
            return
        with self._changed:
            self._buffer.append(data)
            if self._since is None:
                self._since = self._clock()
                self._changed.notify()
            full = len(self._buffer) >= self._max_events or self._closed
            self._start()
        if full:
            self.flush()

    def flush(self) -> None:
        """Write what the buffer holds as the next segment; on failure it stays buffered, and
        the error is raised."""
        if self._file is not None:
            return
        with self._writing:
            with self._changed:
                lines, self._buffer, self._since = self._buffer, [], None
            if not lines:
                return
            try:
                self._write(lines)
            except BaseException:
                with self._changed:
                    self._buffer[:0] = lines
                    self._since = self._clock()  # the next try in a period, not at once
                raise

    def flush_if_due(self) -> bool:
        """Flush when the buffer's first event is ``max_age_s`` old; whether it did."""
        with self._changed:
            due = self._due()
        if due:
            self.flush()
        return due

    def close(self) -> None:
        """Flush, finish a merge under way, and stop the thread."""
        try:
            self.flush()
        finally:
            with self._changed:
                self._closed = True
                self._changed.notify()
                thread = self._thread
            if thread is not None:
                thread.join()

    # --- the object store's side ------------------------------------------------------------
    def _write(self, lines: list[bytes]) -> None:
        repair = False
        if self._next is None:  # a resumed run's: its numbers go on after its last driver's
            found = segments.listing(self.storage, self._dir)
            self._next = max((s.last for s in found), default=-1) + 1
            merges, leftovers = segments.plan(found, self._next, self._fan_out)
            repair = bool(merges or leftovers)  # a crash left a merge undone
        self.storage.write_chunks(lines, *self._dir, Segment(self._next, self._next).name)
        self._next += 1
        if repair or self._next % self._fan_out == 0:
            if not self._background:
                self._compact()
                return
            with self._changed:
                self._compact_due = True
                self._changed.notify()

    def _compact(self) -> None:
        segments.compact(self.storage, self._dir, self._next or 0, self._fan_out)

    def _due(self) -> bool:
        return self._since is not None and self._clock() - self._since >= self._max_age_s

    def _start(self) -> None:
        if self._background and self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="rto-event-log", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        """The thread: writes the buffer when it is due, merges segments when asked, and ends
        once the log is closed with nothing left to do."""
        while True:
            with self._changed:
                while not (self._compact_due or self._due() or self._closed):
                    wait = None if self._since is None else self._since + self._max_age_s - self._clock()
                    self._changed.wait(wait)
                compact, self._compact_due = self._compact_due, False
                flush = self._due()
                if not (compact or flush):
                    return  # closed
            if flush:
                _try(self.flush, f"write the events of {self._dir[-2]} (they stay buffered)")
            if compact:
                _try(self._compact, f"merge the event log segments of {self._dir[-2]} (the next merge retries)")


def _try(work: Callable[[], None], what: str) -> None:
    try:
        work()
    except Exception as e:  # noqa: BLE001 — the driver's next flush (a state save) raises it
        log.warning("rto: could not %s: %s", what, e)


def read(storage: Storage, run_dir: tuple[str, ...]) -> list[str]:
    """The log's lines, oldest first: ``events.jsonl``'s, whose last line is left out while its
    writer is still writing it, then the segments'. Segments are read at once."""
    lines: list[str] = []
    path = (*run_dir, constants.EVENTS_FILE)
    if storage.exists(*path):
        text = storage.read_bytes(*path).decode()
        lines = text[: text.rfind("\n") + 1].splitlines()
    directory = (*run_dir, constants.EVENTS_DIR)
    for attempt in range(_READ_TRIES):
        chosen = segments.cover(segments.listing(storage, directory))
        try:
            contents = segments.read(storage, directory, chosen)
            break
        except FileNotFoundError:  # merged away since it was listed: the merged one has it
            if attempt == _READ_TRIES - 1:
                raise
    for content in contents:
        lines.extend(content.decode().splitlines())
    return [line for line in lines if line.strip()]
