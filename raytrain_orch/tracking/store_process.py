"""The driver's MLflow store in a process of its own: each ``Tracker`` call sent over a pipe,
applied there, and its result or error sent back.

MLflow's client does its work in Python (SQLAlchemy, for a SQLite store): some 8 ms of CPU for
each step attempt's runs, and ~1.5 s to load. In the driver's process that work holds the
interpreter lock that the run's loop and its step threads need, so every step waited for it.
In a child process it runs on another core, and the driver never loads MLflow at all. The
outbox (one thread) is its only caller; a child that died is started again for the next call.

    python -m raytrain_orch.tracking.store_process TRACKING_URI    # the child: calls on stdin
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from typing import IO, Any, cast

from raytrain_orch.tracking.tracker import Tracker, transient


class StoreCallError(Exception):
    """What a call raised in the store's process: its type and message, and whether a retry may
    succeed (``tracker.transient``, judged where the error is)."""

    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient


class StoreProcess:
    """A ``Tracker`` of ``tracking_uri`` in a child process; its methods are called there."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self._child: subprocess.Popen[bytes] | None = None

    @classmethod
    def connect(cls, tracking_uri: str) -> Tracker:
        """The outbox's ``connect``: a stand-in with the ``Tracker``'s methods."""
        return cast(Tracker, cls(tracking_uri))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self._call(name, args, kwargs)

    def _call(self, name: str, args: tuple, kwargs: dict) -> Any:
        child = self._started()
        try:
            pickle.dump((name, args, kwargs), cast(IO[bytes], child.stdin))
            cast(IO[bytes], child.stdin).flush()
            ok, value, judged = pickle.load(cast(IO[bytes], child.stdout))
        except (OSError, EOFError, pickle.UnpicklingError) as error:
            self.close()  # the next call starts a new one
            raise ConnectionError(f"the MLflow store's process ended ({type(error).__name__})") from None
        if ok:
            return value
        raise StoreCallError(value, judged)

    def _started(self) -> subprocess.Popen[bytes]:
        if self._child is None or self._child.poll() is not None:
            command = [sys.executable, "-m", "raytrain_orch.tracking.store_process", self.tracking_uri]
            # A session of its own: Ctrl-C and a stopped job's signals are the driver's to handle; the
            # child ends when the driver closes its input (or exits).
            self._child = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
            )
        return self._child

    def close(self) -> None:
        """End the child: it exits when its input closes."""
        child, self._child = self._child, None
        if child is None:
            return
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()


def serve(tracking_uri: str, calls: IO[bytes], answers: IO[bytes]) -> None:
    """Apply each call read from ``calls`` to a ``Tracker``; write back (True, its result, None), or
    (False, its error's type and message, whether it is ``transient``): plain data, which the
    caller unpickles whatever this module is called here."""
    store = Tracker(tracking_uri)
    while True:
        try:
            name, args, kwargs = pickle.load(calls)
        except EOFError:
            return
        try:
            answer: tuple[bool, Any, bool | None] = (True, getattr(store, name)(*args, **kwargs), None)
        except Exception as error:  # noqa: BLE001 — every error goes back to the caller, as data
            answer = (False, f"{type(error).__name__}: {error}", transient(error))
        try:
            pickle.dump(answer, answers)
            answers.flush()
        except BrokenPipeError:
            return  # the driver closed the store before this answer (a run that ended early): done


def _main() -> None:
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr  # what MLflow prints must not garble the answers
    try:
        os.nice(19)  # like the outbox's thread: yield the CPUs to the run's workers
    except OSError:
        pass
    serve(sys.argv[1], sys.stdin.buffer, answers)


if __name__ == "__main__":
    _main()
