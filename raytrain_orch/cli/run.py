"""``rto run`` and ``rto resume``: drive a pipeline run here, with the live view on the console."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, Any

from raytrain_orch.cli.command import Command, add_config_arguments, add_run_id_argument, add_storage_argument
from raytrain_orch.core import constants
from raytrain_orch.core.errors import EXIT_OK, ConfigError
from raytrain_orch.store.state import RunState, RunStore, ray_job_id
from raytrain_orch.store.storage import Storage

if TYPE_CHECKING:
    from raytrain_orch.engine.driver import Prepared

_THROWAWAY_HELP = "without --address: a private local Ray that stops with the run, instead of the shared local runtime"


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--address", help="join this Ray cluster instead of starting a local one (e.g. auto, HOST:6379)"
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="recompute every step, even those with a stored identical result"
    )
    parser.add_argument(
        "--rerun",
        action="append",
        default=[],
        metavar="STEP",
        help="recompute STEP and everything downstream of it (repeatable)",
    )
    parser.add_argument("--throwaway-ray", action="store_true", help=_THROWAWAY_HELP)
    parser.add_argument("--run-id", help="the new run's id (default: NAME-DATE-TIME-RANDOM); `rto submit` sets it")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="with --run-id: if that run exists, resume it instead (for jobs a scheduler retries)",
    )


def cmd_run(args: argparse.Namespace) -> int:
    from raytrain_orch.engine.driver import prepare, prepare_cached
    from raytrain_orch.engine.reach import check_storage_reach

    overrides = [*args.set, *(["ray.runtime=throwaway"] if args.throwaway_ray else [])]
    # Every step cached, and the pipeline's sources as an earlier run recorded them: nothing to import.
    prepared = prepare_cached(args.config, overrides) if not (args.no_cache or args.rerun or args.run_id) else None
    prepared = prepared or prepare(args.config, overrides)
    if args.resume and not args.run_id:
        raise ConfigError("--resume needs --run-id: it continues that run when it exists")
    if args.run_id:
        check_storage_reach(prepared.config)  # a submitted job's bucket must answer before it is asked for the run
    if args.run_id and _run_exists(prepared.config.storage, args.run_id):
        if not args.resume:
            raise ConfigError(
                f"run {args.run_id} already exists under {prepared.config.storage}; "
                f"`rto resume {args.run_id}` continues it, or drop --run-id for a new run"
            )
        # A retried job (KubeRay's backoffLimit): the job that drove the run before has ended.
        previous = RunStore(Storage(prepared.config.storage)).load(args.run_id).driver.get("ray_job_id")
        args.storage, args.after_job = prepared.config.storage, previous if previous != ray_job_id() else None
        return cmd_resume(args)
    return _drive(prepared, args.address, run_id=args.run_id, use_cache=not args.no_cache, rerun=args.rerun)


def add_resume_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_id_argument(parser)
    parser.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    parser.add_argument("--throwaway-ray", action="store_true", help=_THROWAWAY_HELP)
    parser.add_argument(
        "--after-job",
        metavar="JOB_ID",
        help="the Ray job that drove the run has ended, wherever its driver was (`rto submit` sets it)",
    )
    add_storage_argument(parser)


def cmd_resume(args: argparse.Namespace) -> int:
    from raytrain_orch.engine.driver import prepare_resume

    prepared, previous = prepare_resume(args.run_id, args.storage, after_job=args.after_job)
    if args.throwaway_ray:
        ray_config = prepared.config.ray.model_copy(update={"runtime": "throwaway"})
        prepared = dataclasses.replace(prepared, config=prepared.config.model_copy(update={"ray": ray_config}))
    return _drive(prepared, args.address, resume=previous)


def _drive(prepared: Prepared, address: str | None, **options: Any) -> int:
    """The one place the CLI drives a run: the live view receives the driver's events."""
    from raytrain_orch.cli.live import progress_view
    from raytrain_orch.cli.wiring import execute

    with progress_view(prepared.plan) as sink:  # stopped before main's Ctrl-C exit, leaving its last picture
        state = execute(prepared, address=address, on_event=sink, **options)
    _print_summary(state)
    return EXIT_OK


def _run_exists(storage: str, run_id: str) -> bool:
    store = RunStore(Storage(storage))
    return store.storage.exists(*store.run_path(run_id, constants.STATE_FILE))


def _print_summary(state: RunState) -> None:
    metrics = {k: v for s in state.steps.values() for k, v in s.metrics.items() if k.startswith("test_")}
    shown = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    print(f"run {state.run_id} {state.status.value}" + (f"  {shown}" if shown else ""))
    print(f"  status:  rto status {state.run_id}\n  mlflow:  rto ui")


RUN = Command("run", "run a pipeline", add_run_arguments, cmd_run)
RESUME = Command(
    "resume",
    "continue an interrupted or failed run: finished steps are kept, training continues from its latest good "
    "checkpoint",
    add_resume_arguments,
    cmd_resume,
)
