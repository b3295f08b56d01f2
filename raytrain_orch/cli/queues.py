"""``rto queues apply FILE`` and ``rto queue``: a shared cluster's queues, and who holds and waits.

``rto queues apply queues.yaml`` validates the definitions (``core/queues.py``) against the
cluster's resources and hands them to its admission actor, which keeps them in the GCS.
``rto queue`` prints each queue's quota, use and borrowing, every running gang and every waiting
one with its position and why it waits; ``--json`` gives the same as data.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from raytrain_orch.cli.command import Command, add_json_argument
from raytrain_orch.cli.format import table
from raytrain_orch.core.config import RayConfig
from raytrain_orch.core.errors import EXIT_OK, ConfigError
from raytrain_orch.core.queues import QueuesFile
from raytrain_orch.core.text import duration


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="the Ray cluster (default: the local runtime `rto run` started)")


@contextlib.contextmanager
def _joined(address: str | None) -> Iterator[None]:
    """Connected to the cluster at ``address``, or to the shared local runtime."""
    from raytrain_orch.ray import runtime, session

    if address is None:
        shared = runtime.current()
        if shared is None:
            raise ConfigError(
                "no Ray cluster to ask: pass --address HOST:PORT, or start the local runtime (any `rto run` does)"
            )
        address = shared.address
    connection = session.connect(RayConfig(), address)
    try:
        yield
    finally:
        if connection.initialized:
            session.disconnect()


def add_apply_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["apply"], help="apply: replace the cluster's queue definitions")
    parser.add_argument("file", help="queue definitions, e.g. queues.yaml (docs/gangs.md, 'Queues and quotas')")
    _add_address(parser)


def cmd_queues(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; give the queue definitions' YAML file")
    definitions = QueuesFile.parse(yaml.safe_load(path.read_text()), source=str(path))
    from raytrain_orch.ray import admission, session

    with _joined(args.address):
        definitions.check_resources(set(session.cluster_spec().total()))
        names = admission.apply_queues(definitions.model_dump(mode="json"))
    print(f"applied {len(definitions.queues)} queue definition(s); the cluster's queues: {', '.join(names)}")
    return EXIT_OK


def add_queue_arguments(parser: argparse.ArgumentParser) -> None:
    _add_address(parser)
    add_json_argument(parser)


def cmd_queue(args: argparse.Namespace) -> int:
    from raytrain_orch.ray import admission

    with _joined(args.address):
        books = admission.admission_snapshot()
        if books is None:  # nothing has asked it yet: its definitions, nothing held
            books = {"queues": admission.stored_queues(), "granted": [], "waiting": [], "free": []}
    if args.json:
        print(json.dumps(books, indent=2, default=str))
    else:
        show(books, time.time())
    return EXIT_OK


def show(books: Mapping[str, Any], now: float) -> None:
    """Print the queue as people read it: queues, running gangs, waiting gangs."""
    queues = [
        [
            name,
            _amounts(q.get("quota")) or "no quota",
            _amounts(q.get("uses")) or "-",
            _amounts(q.get("borrows")) or "-",
            q.get("cohort") or "-",
            q.get("preemption", ""),
        ]
        for name, q in books.get("queues", {}).items()
    ]
    running = [
        [
            _run(r["label"]),
            _step(r["label"]),
            r["queue"],
            str(r["priority"]),
            _amounts(r.get("resources")),
            f"{duration(now - r['since'])} ago" if r.get("since") is not None else "",
            _preempting(r),
        ]
        for r in books.get("granted", [])
    ]
    waiting = [
        [str(r["position"]), _run(r["label"]), _step(r["label"]), r["queue"], str(r["priority"]), r.get("why", "")]
        for r in books.get("waiting", [])
    ]
    table([["QUEUE", "QUOTA", "USES", "BORROWS", "COHORT", "PREEMPTION"], *queues])
    print()
    if running:
        table([["RUNNING", "STEP", "QUEUE", "PRIORITY", "RESOURCES", "SINCE", ""], *running])
    else:
        print("running: none")
    print()
    if waiting:
        table([["WAITING", "RUN", "STEP", "QUEUE", "PRIORITY", "WHY"], *waiting])
    else:
        print("waiting: none")


def _amounts(amounts: Mapping[str, float] | None) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted((amounts or {}).items()) if not k.startswith("node:"))


def _run(label: str) -> str:
    return label.split("/")[0]


def _step(label: str) -> str:
    return "/".join(label.split("/")[1:])


def _preempting(row: Mapping[str, Any]) -> str:
    by = row.get("preempted_by")
    if not by:
        return ""
    return f"preempted by {by['label']}" + (f" (shrinking to {by['keep']})" if by.get("keep") else "")


QUEUES = Command(
    "queues", "apply a cluster's queue definitions (quotas, cohorts, preemption)", add_apply_arguments, cmd_queues
)
QUEUE = Command(
    "queue",
    "show a cluster's queues (quota, use, borrowing), its running gangs and its waiting ones, with why they wait",
    add_queue_arguments,
    cmd_queue,
)
