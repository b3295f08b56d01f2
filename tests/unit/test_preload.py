"""A worker's preload: only in a process that waits for work, and never importing at the same
time as the process's own work (two threads importing circularly dependent modules deadlock)."""

from __future__ import annotations

import builtins
import importlib
import sys
import threading
import time
import uuid

import pytest

from raytrain_orch.ray.preload import Preload


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """Write modules (name → body) under unique names on the path; their names, in order."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(**bodies: str) -> list[str]:
        tag = uuid.uuid4().hex[:8]
        names = {name: f"{name}_{tag}" for name in bodies}
        for name, body in bodies.items():
            (tmp_path / f"{names[name]}.py").write_text(body.format(**names))
        written.extend(names.values())
        return list(names.values())

    yield write
    for name in written:
        sys.modules.pop(name, None)


@pytest.fixture(autouse=True)
def imports_restored():
    originals = builtins.__import__, importlib.import_module
    yield
    assert (builtins.__import__, importlib.import_module) == originals  # a preload always puts them back


def test_a_process_that_waits_for_work_preloads_every_module(modules):
    first, second = modules(first="VALUE = 1", second="import {first}")
    preload = Preload([first, second], grace_s=0.05)

    preload.start()
    preload.join(10)

    assert preload.imported == [first, second] and sys.modules[second]


def test_a_process_that_imports_at_once_preloads_nothing(modules):
    (heavy,) = modules(heavy="VALUE = 1")
    preload = Preload([heavy], grace_s=0.5)

    preload.start()
    import json  # noqa: F401 — the process's own work, within the grace period

    preload.join(10)
    assert preload.imported == [] and heavy not in sys.modules


def test_the_process_s_own_import_waits_for_the_module_being_preloaded_then_the_preload_stops(modules):
    # a and b import each other after a pause (b through importlib, as Ray's code does): one
    # thread importing a while another imports b holds one module's lock and waits for the
    # other's, and Python raises _DeadlockError in one of them.
    a, b, later = modules(
        a="import time\ntime.sleep(0.5)\nimport {b}\n",
        b="import importlib, time\ntime.sleep(0.5)\nimportlib.import_module('{a}')\n",
        later="VALUE = 1",
    )
    preload = Preload([a, later], grace_s=0.01)
    preload.start()
    time.sleep(0.2)  # the preload is inside a's pause
    errors: list[BaseException] = []

    def work() -> None:
        try:
            importlib.import_module(b)
        except BaseException as e:  # noqa: BLE001 — the test reports it
            errors.append(e)

    worker = threading.Thread(target=work)
    began = time.monotonic()
    worker.start()
    worker.join(10)
    preload.join(10)

    assert errors == [] and sys.modules[b]
    assert time.monotonic() - began >= 0.2  # it waited for a, which imported b on the way
    assert preload.imported == [a] and later not in sys.modules  # and the preload went no further
