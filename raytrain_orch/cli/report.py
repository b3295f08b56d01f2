"""``rto report RUN``: where a run's time and money went — per step, attempt, item and trial its
wait, start-up, work, checkpoint stalls, time lost to restarts and hangs, and teardown; what its
gangs reserved against what they used; the cost with a ``cost:`` table; the critical path and
the biggest saving. ``--open`` writes the timeline (HTML and PNG) and opens it in the browser.

Read from the run's durable record like ``rto status``, so it works while the run goes on, after
it ended, and after its driver died."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import webbrowser
from pathlib import Path
from typing import Any

import yaml

from raytrain_orch.cli.command import Command, add_json_argument, add_storage_argument
from raytrain_orch.core import constants, report_text
from raytrain_orch.core.errors import EXIT_OK
from raytrain_orch.core.report import Report, build
from raytrain_orch.store.state import RunState, RunStore
from raytrain_orch.store.storage import Storage


def load(store: RunStore, state: RunState) -> Report:
    """The report of a run as its record holds it now (a running run's, up to this moment)."""
    run_id = state.run_id
    plan = store.storage.read_json(*store.run_path(run_id, constants.PLAN_FILE))
    prices = _prices(store, run_id)
    now = None if state.ended_at else time.time()
    return build(store.events(run_id), plan, prices, now=now)


def _prices(store: RunStore, run_id: str) -> dict[str, float] | None:
    """The ``cost:`` table of the run's own resolved config."""
    path = store.run_path(run_id, constants.RESOLVED_CONFIG_FILE)
    if not store.storage.exists(*path):
        return None
    config: Any = yaml.safe_load(store.storage.read_bytes(*path).decode()) or {}
    return config.get("cost") if isinstance(config, dict) else None


def cmd_report(args: argparse.Namespace) -> int:
    store = RunStore(Storage(args.storage))
    state = store.load(args.run_id) if args.run_id else store.latest()
    report = load(store, state)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(report_text.render(report.to_dict()), end="")
    if args.open or args.html:
        from raytrain_orch.tracking import report_files  # matplotlib loads only for the picture

        local = store.storage.local_path(*store.run_path(state.run_id, "report"))  # beside the run, when local
        directory = Path(args.html or local or tempfile.mkdtemp(prefix=f"rto-report-{state.run_id}-")).resolve()
        report_files.write(report, directory)
        page = directory / "timeline.html"
        print(f"timeline: {page} (and timeline.png beside it)")
        if args.open:
            webbrowser.open(page.as_uri())
    return EXIT_OK


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", nargs="?", help="run id (see `rto runs`; default: the newest run)")
    add_json_argument(parser)
    parser.add_argument("--open", action="store_true", help="write the timeline (HTML and PNG) and open it")
    parser.add_argument(
        "--html", metavar="DIR", help="write report.json, report.txt, timeline.html and timeline.png into DIR"
    )
    add_storage_argument(parser)


REPORT = Command(
    "report",
    "where a run's time and money went: per step its wait, start-up, work, checkpoints, restarts, hangs; "
    "reserved against used; cost; the critical path (default: the newest run)",
    add_report_arguments,
    cmd_report,
)
