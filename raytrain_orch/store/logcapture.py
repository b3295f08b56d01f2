"""Each step attempt's own output, captured where it runs (a Ray task, or each Ray Train worker).

``capture(ctx, rank)`` tees ``sys.stdout``, ``sys.stderr`` and the root logger into the
attempt's log file (``steplogs.log_parts``); everything still reaches Ray's worker logs and the
driver's console as before. A train worker writes ``attempt-N.rank-K.log``, a sweep trial's
worker ``STEP/TRIAL/attempt-N.rank-K.log``.

On a local storage root the file is written in place, line by line, so ``rto logs --follow``
shows a running step; on an object store it is written to a temporary file and uploaded when
the attempt ends, also when it fails. Keeping a log never fails a step: the first I/O error is
reported once as a warning and the step runs on without its log.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import traceback
import warnings
from typing import Any, Callable, Protocol

from raytrain_orch.core.redact import masked, secret_values
from raytrain_orch.store.steplogs import RECORD_FORMAT, log_parts
from raytrain_orch.store.storage import Storage


class Attempt(Protocol):
    """Where an attempt's log belongs: what ``capture`` reads of a step's ``ctx``."""

    @property
    def step(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def trial(self) -> str | None: ...
    @property
    def run_path(self) -> tuple[str, ...]: ...
    @property
    def secrets(self) -> tuple[str, ...]: ...
    @property
    def storage(self) -> Storage: ...


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

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        try:
            if error is not None:
                # Into the log only: Ray shows the exception on the console itself, as before.
                self._sink.write("".join(traceback.format_exception(kind, error, tb)))
        finally:
            logging.getLogger().removeHandler(self._handler)
            sys.stdout, sys.stderr = self._streams  # Ray reuses task worker processes
            self._sink.close()
        # returning None: the step's exception propagates unchanged


class _Sink:
    """The attempt's log file, shared by both streams and the logging handler."""

    def __init__(
        self,
        where: str,
        file: Any = None,
        upload: Callable[[], None] | None = None,
        temporary: str | None = None,
        secrets: tuple[str, ...] = (),
    ):
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
            return cls(
                where, file, upload=lambda: _upload(storage, parts, temporary), temporary=temporary, secrets=secrets
            )
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
    warnings.warn(
        f"rto: the log of {where} is not kept ({type(error).__name__}: {error}); the step runs on without it",
        RuntimeWarning,
        stacklevel=2,
    )


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
        self.setFormatter(logging.Formatter(RECORD_FORMAT))

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
