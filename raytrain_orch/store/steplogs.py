"""Each step attempt's own output, kept with its run: ``runs/RUN_ID/logs/STEP/attempt-N.log``.

Where an attempt runs (a Ray task, or each Ray Train worker), ``capture(ctx, rank)`` tees
``sys.stdout``, ``sys.stderr`` and the root logger into the attempt's log file; everything still
reaches Ray's worker logs and the driver's console as before. A train worker writes
``attempt-N.rank-K.log``, a sweep trial's worker ``STEP/TRIAL/attempt-N.rank-K.log``.

On a local storage root the file is written in place, line by line, so ``rto logs --follow``
shows a running step; on an object store it is written to a temporary file and uploaded when
the attempt ends, also when it fails. Keeping a log never fails a step: the first I/O error is
reported once as a warning and the step runs on without its log.

``show`` and ``follow`` find and read the logs for ``rto logs``; they print nothing themselves.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

from raytrain_orch.core.errors import ConfigError
from raytrain_orch.core.redact import masked, secret_values
from raytrain_orch.store.state import RunState, RunStore, Status
from raytrain_orch.store.storage import Storage, safe_name

class Attempt(Protocol):
    """Where an attempt's log belongs: what ``capture`` reads of a step's ``ctx``."""

    step: str
    attempt: int
    trial: str | None
    run_path: tuple[str, ...]
    secrets: tuple[str, ...]

    @property
    def storage(self) -> Storage: ...

LOGS_DIR = "logs"
_LOG_FILE = re.compile(r"attempt-(\d+)(?:\.rank-(\d+))?\.log")
_RECORD_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_parts(run_path: tuple[str, ...], step: str, attempt: int, rank: int | None = None, trial: str | None = None) -> tuple[str, ...]:
    """Where one attempt's log lives below the storage root (each name checked by ``safe_name``)."""
    directory = (*run_path, LOGS_DIR, safe_name(step, "step name"), *((safe_name(trial, "trial name"),) if trial else ()))
    return (*directory, f"attempt-{int(attempt)}" + ("" if rank is None else f".rank-{int(rank)}") + ".log")


# --- writing: where the step runs ------------------------------------------------------------


class capture:
    """Keep one step attempt's output in its log while the ``with`` block runs.

    Not reentrant across threads: the streams it swaps are the process's, which is right for a
    Ray task or a Ray Train worker (one attempt per process at a time).
    """

    def __init__(self, ctx: Attempt, rank: int | None = None):
        self._ctx, self._rank = ctx, rank

    def __enter__(self) -> capture:
        # Secrets the step holds (its secret params, secret-named env vars such as a job's
        # --env tokens) are masked in what it prints and logs: in its log and on the console.
        secrets = tuple(sorted({*self._ctx.secrets, *secret_values(os.environ)}, key=len, reverse=True))
        self._sink = _Sink.create(self._ctx, self._rank, secrets)
        self._streams = sys.stdout, sys.stderr
        self._handler = _Handler(self._sink)
        sys.stdout, sys.stderr = _tee(sys.stdout, self._sink), _tee(sys.stderr, self._sink)
        logging.getLogger().addHandler(self._handler)
        return self

    def __exit__(self, kind, error, tb) -> bool:
        try:
            if error is not None:
                # Into the log only: Ray shows the exception on the console itself, as before.
                self._sink.write("".join(traceback.format_exception(kind, error, tb)))
        finally:
            logging.getLogger().removeHandler(self._handler)
            sys.stdout, sys.stderr = self._streams  # Ray reuses task worker processes
            self._sink.close()
        return False  # the step's exception propagates unchanged


class _Sink:
    """The attempt's log file, shared by both streams and the logging handler."""

    def __init__(self, where: str, file: Any = None, upload: Callable[[], None] | None = None, temporary: str | None = None,
                 secrets: tuple[str, ...] = ()):
        self.where = where
        self.secrets = secrets
        self._file = file
        self._upload = upload  # remote storage: send the finished temporary file there
        self._temporary = temporary
        self._lock = threading.RLock()

    @classmethod
    def create(cls, ctx: Attempt, rank: int | None, secrets: tuple[str, ...] = ()) -> _Sink:
        where = f"step {ctx.step} attempt {ctx.attempt}" + ("" if rank is None else f" rank {rank}")
        try:
            storage = ctx.storage
            parts = log_parts(ctx.run_path, ctx.step, ctx.attempt, rank, ctx.trial)
            local = storage.local_path(*parts)
            if local is not None:
                local.parent.mkdir(parents=True, exist_ok=True)
                # Appended: Ray Train restarts a failed worker group within the same attempt.
                return cls(where, open(local, "a", buffering=1, encoding="utf-8", errors="replace"), secrets=secrets)
            fd, temporary = tempfile.mkstemp(prefix="rto-log-", suffix=".log")
            file = os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="replace")
            return cls(where, file, upload=lambda: _upload(storage, parts, temporary), temporary=temporary, secrets=secrets)
        except Exception as error:  # noqa: BLE001 — a log must never fail the step
            _warn(where, error)
            return cls(where, secrets=secrets)

    def write(self, text: str) -> None:
        if not text or self._file is None:
            return
        with self._lock:
            try:
                if self._file is not None:
                    self._file.write(masked(text, self.secrets))
            except Exception as error:  # noqa: BLE001
                self._fail(error)

    def flush(self) -> None:
        with self._lock:
            try:
                if self._file is not None:
                    self._file.flush()
            except Exception as error:  # noqa: BLE001
                self._fail(error)

    def close(self) -> None:
        with self._lock:
            file, self._file = self._file, None
        if file is None:
            return
        try:
            file.close()
            if self._upload is not None:
                self._upload()
        except Exception as error:  # noqa: BLE001
            _warn(self.where, error)
        finally:
            _remove(self._temporary)

    def _fail(self, error: BaseException) -> None:
        file, self._file = self._file, None  # first, so the warning below is not written here again
        try:
            file.close()
        except Exception:  # noqa: BLE001
            pass
        _remove(self._temporary)
        _warn(self.where, error)


def _upload(storage: Storage, parts: tuple[str, ...], path: str) -> None:
    with open(path, "rb") as src:
        data = src.read()
    # A restarted worker group writes the same attempt's log again: keep what came before.
    previous = storage.read_bytes(*parts) if storage.exists(*parts) else b""
    storage.write_bytes(previous + data, *parts)


def _remove(path: str | None) -> None:
    if path is None:
        return
    try:
        os.remove(path)
    except OSError:
        pass


def _warn(where: str, error: BaseException) -> None:
    warnings.warn(f"rto: the log of {where} is not kept ({type(error).__name__}: {error}); the step runs on without it", RuntimeWarning, stacklevel=2)


class _Tee:
    """A text stream that writes through to the original stream and copies into the log."""

    def __init__(self, stream: Any, sink: _Sink):
        self._stream, self._sink = stream, sink

    def write(self, text: str) -> int:
        shown = masked(text, self._sink.secrets)
        self._stream.write(shown)  # the original first: the console sees what it always did, secrets masked
        self._sink.write(shown)
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._stream.flush()
        self._sink.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, buffer, …
        if name in ("_stream", "_sink"):  # not set yet (a copy being built): no endless recursion
            raise AttributeError(name)
        return getattr(self._stream, name)


def _tee(stream: Any, sink: _Sink) -> Any:
    return stream if stream is None else _Tee(stream, sink)


class _Handler(logging.Handler):
    """Copies the root logger's records into the log."""

    def __init__(self, sink: _Sink):
        super().__init__()
        self._sink = sink
        self.setFormatter(logging.Formatter(_RECORD_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        last = logging.lastResort
        if last is not None and record.levelno >= last.level and not _handled_elsewhere(record, self):
            # Without this handler, logging's last resort would print the record on stderr (so
            # through the tee into the log too); keep that rather than silence the console.
            last.handle(record)
            return
        try:
            self._sink.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001
            self.handleError(record)


def _handled_elsewhere(record: logging.LogRecord, mine: logging.Handler) -> bool:
    """Whether a handler besides ``mine`` sits on the record's way up the logger tree."""
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None:
        if any(handler is not mine for handler in logger.handlers):
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


# --- reading: rto logs ----------------------------------------------------------------------


@dataclass(frozen=True)
class LogFile:
    """One kept log: a step attempt's, or one rank's of it."""

    step: str
    attempt: int
    rank: int | None
    trial: str | None
    parts: tuple[str, ...]  # below the storage root

    @property
    def title(self) -> str:
        trial = f" trial {self.trial}" if self.trial else ""
        rank = "" if self.rank is None else f" rank {self.rank}"
        return f"{self.step} attempt {self.attempt}{trial}{rank}"

    @property
    def header(self) -> str:
        return f"==> {self.title} ({'/'.join(self.parts)}) <=="


@dataclass(frozen=True)
class StepLogs:
    """What ``rto logs`` shows of one step: its log files, or a note on why there are none."""

    step: str
    files: tuple[LogFile, ...]
    note: str | None = None


def step_logs(storage: Storage, run_path: tuple[str, ...], step: str) -> list[LogFile]:
    """Every kept log of ``step``, by attempt, trial and rank."""
    directory = (*run_path, LOGS_DIR, safe_name(step, "step name"))
    found: list[LogFile] = []
    for name in storage.listdir(*directory):
        match = _LOG_FILE.fullmatch(name)
        if match:
            found.append(_log_file(step, match, None, (*directory, name)))
            continue
        try:  # not a log file: a sweep trial's directory
            inner = storage.listdir(*directory, name)
        except (OSError, ValueError):
            continue
        for file in inner:
            match = _LOG_FILE.fullmatch(file)
            if match:
                found.append(_log_file(step, match, name, (*directory, name, file)))
    return sorted(found, key=lambda f: (f.attempt, f.trial or "", -1 if f.rank is None else f.rank))


def _log_file(step: str, match: re.Match, trial: str | None, parts: tuple[str, ...]) -> LogFile:
    return LogFile(step, int(match[1]), None if match[2] is None else int(match[2]), trial, parts)


def select(store: RunStore, state: RunState, step: str | None = None, attempt: int | None = None, rank: int | None = None) -> list[StepLogs]:
    """The logs to show, in pipeline order: each step's latest attempt (or ``attempt``), every
    rank (or ``rank``); a step without one gets a note saying why."""
    names = list(state.steps)
    if step is not None and step not in state.steps:
        hint = difflib.get_close_matches(step, names, n=1)
        raise ConfigError(f"run {state.run_id} has no step {step!r} (its steps: {', '.join(names)})" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    if attempt is not None and step is None:
        raise ConfigError("--attempt needs --step: attempts are numbered per step")
    chosen = []
    for name in [step] if step is not None else names:
        every = step_logs(store.storage, store.run_path(state.run_id), name)
        wanted = attempt if attempt is not None else max((f.attempt for f in every), default=None)
        files = tuple(f for f in every if f.attempt == wanted and (rank is None or f.rank == rank))
        chosen.append(StepLogs(name, files, None if files else _note(name, state, every, attempt, rank)))
    return chosen


_NO_LOG = {
    Status.CACHED: "cached, no log (the output was reused from an earlier run)",
    Status.PENDING: "pending, no log yet (the step has not started)",
    Status.WAITING: "waiting for its resources, no log yet",
    Status.RUNNING: "running, no log yet",
    Status.SKIPPED: "skipped, no log (an upstream step failed)",
}


def _note(step: str, state: RunState, every: list[LogFile], attempt: int | None, rank: int | None) -> str:
    if not every:
        status = state.steps[step].status
        return f"{step}: " + _NO_LOG.get(status, f"{status.value.lower()}, no log kept (a run from before rto kept logs, or writing it failed)")
    wanted = " ".join(([f"attempt {attempt}"] if attempt is not None else []) + ([f"rank {rank}"] if rank is not None else []))
    kept = ", ".join(f.title.removeprefix(f"{step} ") for f in every)
    return f"{step}: no log of {wanted} (kept: {kept})"


def read(storage: Storage, log: LogFile, offset: int = 0) -> bytes:
    """The log's bytes from ``offset`` on (empty if it is gone)."""
    try:
        local = storage.local_path(*log.parts)
        if local is not None:
            with open(local, "rb") as src:
                src.seek(offset)
                return src.read()
        return storage.read_bytes(*log.parts)[offset:]
    except FileNotFoundError:
        return b""


def show(store: RunStore, state: RunState, step: str | None = None, attempt: int | None = None, rank: int | None = None) -> Iterator[str]:
    """The text of ``rto logs``: a header and the contents of each chosen log, or a note."""
    first = True
    for entry in select(store, state, step, attempt, rank):
        if entry.note is not None:
            yield entry.note + "\n"
            continue
        for log in entry.files:
            text = read(store.storage, log).decode("utf-8", errors="replace")
            yield ("" if first else "\n") + log.header + "\n" + text + ("" if not text or text.endswith("\n") else "\n")
            first = False


def follow(
    store: RunStore,
    state: RunState,
    step: str | None = None,
    attempt: int | None = None,
    rank: int | None = None,
    poll_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[str]:
    """The text of ``rto logs --follow``: what the chosen logs hold, then what they gain, until
    the run is no longer RUNNING (its driver ended it, or died); a header whenever the log that
    the text comes from changes."""
    offsets: dict[tuple[str, ...], int] = {}
    shown: LogFile | None = None
    at_line_start = True
    while True:
        final = state.shown_status != Status.RUNNING.value
        chosen = select(store, state, step, attempt, rank)
        for log in (log for entry in chosen for log in entry.files):
            data = read(store.storage, log, offsets.get(log.parts, 0))
            if not final:
                data = data[: data.rfind(b"\n") + 1]  # whole lines while the step may still write
            if not data:
                continue
            offsets[log.parts] = offsets.get(log.parts, 0) + len(data)
            text = data.decode("utf-8", errors="replace")
            if log != shown:
                text = ("" if shown is None else "\n" if at_line_start else "\n\n") + log.header + "\n" + text
            shown, at_line_start = log, text.endswith("\n")
            yield text
        if final:
            if not at_line_start:
                yield "\n"
            yield from (entry.note + "\n" for entry in chosen if entry.note is not None)
            return
        sleep(poll_s)
        state = store.load(state.run_id)
