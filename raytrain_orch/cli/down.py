"""``rto down``: stop the shared local Ray runtime that runs here start and reuse."""

from __future__ import annotations

import argparse
import time

from raytrain_orch.cli.command import Command
from raytrain_orch.core.errors import EXIT_OK, ConfigError
from raytrain_orch.core.text import duration


def add_down_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="stop it even while a run is using it (the run is killed)")


def cmd_down(args: argparse.Namespace) -> int:
    from raytrain_orch.ray import runtime

    stopped, jobs = runtime.stop(force=args.force)
    if stopped is None:
        print("no local runtime is up")
    elif jobs:
        raise ConfigError(
            f"the local runtime at {stopped.address} has {len(jobs)} driver(s) connected (a run is using it); "
            "wait for it to end, or `rto down --force` stops it and the run with it"
        )
    else:
        print(
            f"stopped the local runtime at {stopped.address} (it was up {duration(time.time() - stopped.started_at)})"
        )
    return EXIT_OK


DOWN = Command(
    "down",
    "stop the shared local Ray runtime now (it stops by itself after ray.idle_stop_s)",
    add_down_arguments,
    cmd_down,
)
