"""``stacks.arm``: a process's stacks, written by faulthandler to its own file on a signal."""

from __future__ import annotations

import faulthandler
import os
import time
from types import SimpleNamespace

from raytrain_orch.ray import stacks


def test_a_process_armed_twice_writes_its_stacks_once_to_its_file(monkeypatch, tmp_path):
    monkeypatch.setattr(stacks.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(stacks.ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "node-1"))
    said: list[dict] = []
    ctx = SimpleNamespace(emit=lambda event, **fields: said.append(fields))
    try:
        stacks.arm(ctx)
        stacks.arm(ctx, rank=0)  # a reused worker's next step: the file is armed again, not lost
        os.kill(os.getpid(), stacks.SIGNAL)
        time.sleep(0.1)
    finally:
        faulthandler.unregister(stacks.SIGNAL)

    path = tmp_path / f"rto-stacks-{os.getpid()}.txt"
    assert [s["path"] for s in said] == [str(path)] * 2 and said[1]["rank"] == 0
    assert path.read_text().count("test_a_process_armed_twice") == 1
