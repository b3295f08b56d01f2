"""The Python stacks of a step's processes, taken while they run (hung or not).

Each process a step runs in arms Python's ``faulthandler`` on ``SIGUSR2`` when the step starts
there (``arm``): on that signal the interpreter writes every thread's stack to a file of the
process's own, from C, so a thread blocked in a collective, a lock or ``sleep`` is shown where
it blocks. ``capture`` sends the signal from a 0-CPU task on each process's node and reads what
was written; nothing is attached to the process (no ptrace), and it goes on as before.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import tempfile
import time
from collections import defaultdict
from typing import Any, Mapping, Sequence

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raytrain_orch.core.events import Event

SIGNAL = signal.SIGUSR2
#: How long a dump may take to be written before what is there is read.
_DUMP_WAIT_S = 5.0


def arm(ctx: Any, rank: int | None = None) -> None:
    """Make this process's stacks available to ``capture``, and tell the driver where it runs
    (``ctx`` is the step's ``StepContext``)."""
    path = os.path.join(tempfile.gettempdir(), f"rto-stacks-{os.getpid()}.txt")
    # faulthandler keeps the file open (it holds the file object) until the signal is registered
    # again: a reused worker's next step re-arms it with the same file, the previous one let go.
    out = open(path, "a", encoding="utf-8")  # noqa: SIM115 — owned by faulthandler from here on
    faulthandler.register(SIGNAL, file=out, all_threads=True, chain=False)
    ctx.emit(
        Event.STEP_PROCESS,
        pid=os.getpid(),
        node_id=ray.get_runtime_context().get_node_id(),
        host=os.uname().nodename,
        rank=rank,
        path=path,
    )


@ray.remote(num_cpus=0, max_retries=0)
def _dump(targets: list[tuple[int, str]]) -> list[str | None]:
    """On the processes' node: signal each and read the stacks it wrote (None: it is gone)."""
    found: list[str | None] = []
    for pid, path in targets:
        try:
            start = os.path.getsize(path)
            os.kill(pid, SIGNAL)
        except OSError:
            found.append(None)
            continue
        deadline, size = time.monotonic() + _DUMP_WAIT_S, start
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = os.path.getsize(path)
            if now > start and now == size:  # written, and no longer growing
                break
            size = now
        with open(path, encoding="utf-8", errors="replace") as src:
            src.seek(start)
            found.append(src.read() or None)
    return found


def capture(processes: Sequence[Mapping[str, Any]], timeout_s: float = 30.0) -> list[tuple[Mapping[str, Any], str]]:
    """The stacks of each process (as ``arm`` announced them) that could be read, with its entry."""
    by_node: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for process in processes:
        by_node[process["node_id"]].append(process)
    refs = {
        node: _dump.options(
            name="rto:stacks", scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
        ).remote([(p["pid"], p["path"]) for p in group])
        for node, group in by_node.items()
    }
    taken: list[tuple[Mapping[str, Any], str]] = []
    for node, ref in refs.items():
        try:
            texts = ray.get(ref, timeout=timeout_s)
        except Exception:  # noqa: BLE001 — a node that is gone has no stacks to give
            continue
        taken.extend((p, text) for p, text in zip(by_node[node], texts, strict=True) if text)
    return taken


def render(taken: Sequence[tuple[Mapping[str, Any], str]], header: str) -> str:
    """The stacks as the step's log keeps them: one section per process, rank order."""
    sections = [header]
    for process, text in sorted(taken, key=lambda item: (item[0].get("rank") is None, item[0].get("rank") or 0)):
        who = f"rank {process['rank']}" if process.get("rank") is not None else "the step's process"
        sections.append(f"--- {who}: pid {process['pid']} on {process['host']} ---\n{text.rstrip()}\n")
    return "\n".join(sections)
