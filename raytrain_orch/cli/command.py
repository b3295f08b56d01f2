"""One ``rto`` sub-command as data: its name, its help, the arguments it declares and what it
runs (torchx's ``cmd_*.py`` shape). The command modules each declare theirs; ``main`` only
lists them. Also the arguments several commands share, declared once."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from raytrain_orch.cli.format import DEFAULT_STORAGE


@dataclass(frozen=True)
class Command:
    """``rto NAME``: ``add_arguments`` declares its arguments on its own parser; ``run`` does it
    and returns the exit code (``core.errors.EXIT_*``)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """A config file and its ``--set`` overrides."""
    parser.add_argument("config", help="pipeline config, e.g. configs/digits.yaml")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.params.lr=0.01 (repeatable)",
    )


def add_storage_argument(parser: argparse.ArgumentParser) -> None:
    """The storage root the run-reading commands look under."""
    parser.add_argument(
        "--storage",
        default=DEFAULT_STORAGE,
        help="storage root holding the runs (default: %(default)s, or $RTO_STORAGE)",
    )


def add_run_id_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", help="run id (see `rto runs`)")


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
