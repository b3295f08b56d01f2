"""Importing modules in a worker process while it waits for work, never while it works.

A worker started ahead of need (prestarted, or idle between steps) waits seconds for its first
task; one started for a task gets it at once. ``start`` lets ``GRACE_S`` pass, and imports the
modules only if no other thread of the process has imported anything meanwhile: a process
started for work never pays for modules it may not need.

Once the imports are under way, the first import by any other thread stops them: it waits for
the module being imported, then goes on alone. Two threads importing Ray Train's circularly
dependent modules at the same time deadlock on Python's module locks (Python raises
``_DeadlockError`` in one of them, and a Ray Train worker failed to start with it), so the
preload and the process's work never import at once.
"""

from __future__ import annotations

import builtins
import importlib
import threading
from typing import Any, Callable, Sequence

#: How long a new process must stay idle before it preloads.
GRACE_S = 1.0

#: The longest another thread waits for the module being preloaded (a bound, not an expected wait:
#: one module takes 0.5–2 s here).
WAIT_S = 30.0


class Preload:
    """The preload of one process: ``start`` it once, from Ray's setup hook."""

    def __init__(self, modules: Sequence[str], grace_s: float = GRACE_S):
        self._modules, self._grace_s = list(modules), grace_s
        self._stop = threading.Event()
        self._busy = threading.Lock()  # held while one module imports
        self._thread = threading.Thread(target=self._run, name="rto-preload", daemon=True)
        self._originals: tuple[Callable[..., Any], Callable[..., Any]] = (builtins.__import__, importlib.import_module)
        self.imported: list[str] = []

    def start(self) -> None:
        builtins.__import__, importlib.import_module = self._import, self._import_module
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _import(self, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not self._thread:
            self._give_way()
        return self._originals[0](*args, **kwargs)

    def _import_module(self, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not self._thread:
            self._give_way()
        return self._originals[1](*args, **kwargs)

    def _give_way(self) -> None:
        """Another thread imports: the preload stops after the module it is importing, if any."""
        self._stop.set()
        self._restore()
        if self._busy.acquire(timeout=WAIT_S):
            self._busy.release()

    def _restore(self) -> None:
        if builtins.__import__ == self._import:
            builtins.__import__ = self._originals[0]
        if importlib.import_module == self._import_module:
            importlib.import_module = self._originals[1]

    def _run(self) -> None:
        if self._stop.wait(self._grace_s):
            return  # the process had work at once: it imports what that needs itself
        try:
            for name in self._modules:
                with self._busy:
                    if self._stop.is_set():
                        return
                    try:
                        self._originals[1](name)
                    except Exception:  # noqa: BLE001 — the step that needs it fails with the error, in its own import
                        return
                    self.imported.append(name)
        finally:
            self._restore()
