"""``rto``: builds the top parser from the commands' own modules, dispatches, and maps errors to
exit codes (``core.errors.EXIT_*``): 0 success, 1 pipeline failed, 2 bad usage or config, 3
resources infeasible, 130 interrupted.

User errors print as one line on stderr; ``RTO_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Sequence

from raytrain_orch.cli import down, gc, jobs, plan, queues, report, run, runs, scaffold, ui
from raytrain_orch.cli.command import Command
from raytrain_orch.core import constants
from raytrain_orch.core.errors import EXIT_INTERRUPTED, EXIT_USAGE, OrchError

#: Every ``rto`` command, in the order ``rto --help`` lists them.
COMMANDS: tuple[Command, ...] = (
    run.RUN,
    run.RESUME,
    runs.CHECKPOINTS,
    plan.VALIDATE,
    plan.PLAN,
    down.DOWN,
    runs.STATUS,
    runs.RUNS,
    report.REPORT,
    runs.LOGS,
    gc.GC,
    gc.PIN,
    gc.UNPIN,
    jobs.SUBMIT,
    jobs.JOBS,
    jobs.STOP,
    queues.QUEUES,
    queues.QUEUE,
    scaffold.INIT,
    scaffold.SCHEMA,
    scaffold.COMPLETION,
    ui.UI,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.parser = parser  # `rto completion` describes it
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.handler(args)
    except OrchError as e:
        if constants.DEBUG:
            traceback.print_exc()
        print(f"rto: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("rto: interrupted", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # A step's thread may still be inside Ray's native code; finalizing the interpreter
        # around it can abort. Everything durable is written by now, so leave at once.
        os._exit(EXIT_INTERRUPTED)


def build_parser() -> argparse.ArgumentParser:
    """The ``rto`` parser: one sub-parser per command, with the arguments its module declares."""
    parser = argparse.ArgumentParser(prog="rto", description="Run ML training pipelines on Ray, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command_parser = sub.add_parser(command.name, help=command.help, description=command.help)
        command_parser.set_defaults(handler=command.run)
        command.add_arguments(command_parser)
    return parser
