"""The commands that read runs back: ``rto status``, ``rto runs``, ``rto logs`` and ``rto
checkpoints``. They read the durable record under the storage root, never a driver's memory,
so they work while a run goes on, after it ended, and after its driver died."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter

from raytrain_orch.cli.command import (
    Command,
    add_json_argument,
    add_run_id_argument,
    add_storage_argument,
)
from raytrain_orch.cli.format import table
from raytrain_orch.core import sentences
from raytrain_orch.core.errors import EXIT_OK, ConfigError, RunNotFoundError
from raytrain_orch.core.run_view import RunView
from raytrain_orch.core.text import byte_size, duration
from raytrain_orch.store import collection
from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage


def cmd_checkpoints(args: argparse.Namespace) -> int:
    from raytrain_orch.store.checkpoint import list_checkpoints

    store = RunStore(Storage(args.storage))
    state = store.load(args.run_id)
    storage = store.storage
    rows = [("STEP RUN", "CHECKPOINT", "EPOCH", "VALID", "METRICS / PROBLEM")]
    good = None
    for train_run in storage.listdir(*store.run_path(state.run_id, "checkpoints")):
        directory = storage.path(*store.run_path(state.run_id, "checkpoints", train_run))
        for info in list_checkpoints(storage.fs, directory):
            if info.valid and (good is None or info.name > good.name):
                good = info
            detail = (
                " ".join(f"{k}={v:.4g}" for k, v in info.metrics.items() if k != "epoch")
                if info.valid
                else info.problem
            )
            rows.append(
                (
                    train_run,
                    info.name,
                    "-" if info.epoch is None else str(info.epoch),
                    "yes" if info.valid else "NO",
                    detail,
                )
            )
    if len(rows) == 1:
        print(f"run {state.run_id} has no checkpoints")
        return EXIT_OK
    table(rows)
    print(
        f"latest good: {good.path} (epoch {good.epoch})"
        if good
        else "latest good: none — every checkpoint fails verification"
    )
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from raytrain_orch.cli.status import describe

    store = RunStore(Storage(args.storage))
    state = store.load(args.run_id) if args.run_id else store.latest()
    _reconcile(store, [state])
    view = RunView.of(store.events(state.run_id))
    shown = describe(state, view)
    shown["pinned"] = collection.pinned(store, state.run_id)
    if args.json:
        print(json.dumps(shown, indent=2, default=str))
        return EXIT_OK
    print(f"run {state.run_id}  {shown['status']}  pipeline {state.pipeline}  {duration(state.duration_s)}")
    if state.mlflow.get("run_id"):
        print(f"mlflow: {shown['mlflow_url']}  (run {state.mlflow['run_id']} in {state.mlflow.get('tracking_uri')})")
    if state.collected:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.collected["at"]))
        print(
            f"collected by rto gc at {at}: its checkpoints and artifacts are gone "
            f"({byte_size(state.collected['freed_bytes'])} freed); the record stays"
        )
    if shown["pinned"]:
        print(f"pinned: rto gc keeps it whole (`rto unpin {state.run_id}` to let it go)")
    rows = [("STEP", "STATUS", "ATTEMPTS", "DURATION", "CACHE", "PROGRESS", "METRICS", "ARTIFACT", "MLFLOW RUN")]
    for name, step in shown["steps"].items():
        s = state.steps[name]
        metrics = " ".join(f"{k}={v:.4g}" for k, v in s.metrics.items() if k != "epoch")
        attempts = (
            f"{s.attempts}/{step['max_attempts']}" if step["max_attempts"] and s.status.active else str(s.attempts)
        )
        progress = step["item_progress"] or "-"  # a mapped step's items; a train step's epochs
        if step["epoch"]:
            progress = f"epoch {step['epoch']}/{step['total_epochs'] or '?'}"
        if step["workers"]:
            progress += f", {sentences.worker_group(step['workers'])}"
        cache = "hit" if step["cache_hit"] else "-" if s.status in (Status.PENDING, Status.SKIPPED) else "miss"
        rows.append(
            (
                name,
                s.status.value,
                attempts,
                duration(s.duration_s),
                cache,
                progress,
                metrics or "-",
                step["artifact_uri"] or "-",
                s.mlflow_run_id or "-",
            )
        )
    table(rows)
    _sweeps(view)
    for name, s in state.steps.items():
        for hang in shown["steps"][name]["hung"]:
            print(f"{name}: attempt {hang['attempt']} hung — {hang['reason']}; stacks: {hang['stacks']}")
        if s.waiting:
            print(f"{name}: {s.waiting}")
        if shown["steps"][name]["displaced"]:
            print(f"{name}: displaced {', '.join(shown['steps'][name]['displaced'])} (preempted to admit it)")
        if shown["steps"][name]["skipped"]:
            print(f"{name}: skipped ({shown['steps'][name]['skipped']})")
        if s.error:
            print(f"{name}: {s.error}")
    if state.error and state.status is Status.KILLED:
        print(state.error)
    print(runtime_status())
    return EXIT_OK


def runtime_status(cfg=None) -> str:
    """One line: whether the shared local runtime is up, and what a run here will do."""
    from raytrain_orch.ray import runtime

    up = runtime.current()
    if cfg is not None and cfg.runtime == "throwaway":
        return "local Ray: throwaway (ray.runtime), started and stopped by the run"
    if up is None:
        return "local Ray: none up; the next run starts the shared runtime (it stops when idle, or by `rto down`)"
    return f"local Ray: the shared runtime is up at {up.describe()}"


def _reconcile(store: RunStore, runs: list) -> None:
    """End runs whose driver is gone KILLED (their record and MLflow runs) before showing them."""
    if any(r.status is Status.RUNNING and not r.driver_alive() for r in runs):
        from raytrain_orch.cli.wiring import end_mlflow_runs
        from raytrain_orch.engine.reconcile import reconcile

        for state in reconcile(store, runs, end_tracking=end_mlflow_runs):
            print(
                f"rto: run {state.run_id}: its driver is gone; marked KILLED (resume it with `rto resume "
                f"{state.run_id}`)",
                file=sys.stderr,
            )


def _sweeps(view: RunView) -> None:
    """Each swept step's trials at its latest attempt, from the run's reduced events: the final
    table, or counts so far."""
    from raytrain_orch.cli.progress import trial_table

    for step in view.steps.values():
        if step.sweep_table is not None:
            print(trial_table(step.name, step.sweep_metric or "", step.sweep_table))
        elif step.trials:
            count = Counter(t.status for t in step.trials.values())
            print(
                f"{step.name}: sweep running: {len(step.trials)} trial(s) started, {count['finished']} finished, "
                f"{count['stopped']} stopped early"
            )


def cmd_runs(args: argparse.Namespace) -> int:
    store = RunStore(Storage(args.storage))
    runs = store.list()
    _reconcile(store, runs)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "run_id": r.run_id,
                        "pipeline": r.pipeline,
                        "status": r.shown_status,
                        "started": r.created_at,
                        "duration_s": r.duration_s,
                        "collected": r.collected,
                    }
                    for r in runs
                ],
                indent=2,
            )
        )
        return EXIT_OK
    rows = [("RUN ID", "PIPELINE", "STATUS", "STARTED", "DURATION")]
    for r in runs:
        rows.append(
            (
                r.run_id,
                r.pipeline,
                f"{r.shown_status} (collected)" if r.collected else r.shown_status,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at)),
                duration(r.duration_s),
            )
        )
    table(rows)
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    from raytrain_orch.cli import jobs as cli_jobs
    from raytrain_orch.store import steplogs

    if cli_jobs.is_job_command(args):
        return cli_jobs.job_logs(args)
    store = RunStore(Storage(args.storage))
    try:
        state = store.load(args.run_id) if args.run_id else store.latest()
    except RunNotFoundError:
        if args.run_id and os.environ.get("RAY_ADDRESS"):  # not here: a run submitted to the cluster
            return cli_jobs.job_logs(args)
        raise
    _reconcile(store, [state])
    view = steplogs.follow if args.follow else steplogs.show
    step = args.step
    if args.item is not None:
        if step is None or state.steps.get(step) is None or state.steps[step].items is None:
            raise ConfigError(f"--item {args.item} needs --step naming a mapped step of run {state.run_id}")
        if not 0 <= args.item < (state.steps[step].items or 0):
            raise ConfigError(f"--item {args.item}: step {step} has {state.steps[step].items} item(s), 0 to N-1")
        step = f"{step}[{args.item}]"  # the item's unit
    for text in view(store, state, step=step, attempt=args.attempt, rank=args.rank):
        print(text, end="", flush=args.follow)
    return EXIT_OK


def add_checkpoints_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_id_argument(parser)
    add_storage_argument(parser)


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", nargs="?", help="run id (see `rto runs`)")
    add_json_argument(parser)
    add_storage_argument(parser)


def add_runs_arguments(parser: argparse.ArgumentParser) -> None:
    add_json_argument(parser)
    add_storage_argument(parser)


def add_logs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_id",
        metavar="JOB_OR_RUN",
        nargs="?",
        help="run id (see `rto runs`), or a Ray job id (rto-RUN-N, see `rto jobs`)",
    )
    parser.add_argument("--step", help="only this step")
    parser.add_argument("--attempt", type=int, metavar="N", help="this attempt of --step instead of its latest")
    parser.add_argument("--rank", type=int, metavar="K", help="only the train worker of this rank")
    parser.add_argument("--item", type=int, metavar="I", help="only item I of the mapped step --step (0-based)")
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing new output until the run ends")
    parser.add_argument(
        "--address",
        help="the Ray dashboard's URL (http://HEAD:8265): show the driver log of the run's Ray jobs (a job id needs "
        "no flag with $RAY_ADDRESS)",
    )
    add_storage_argument(parser)


CHECKPOINTS = Command(
    "checkpoints",
    "list a run's checkpoints with epoch, metrics and whether they verify",
    add_checkpoints_arguments,
    cmd_checkpoints,
)
STATUS = Command("status", "show a run's steps (default: the newest run)", add_status_arguments, cmd_status)
RUNS = Command("runs", "list runs, newest first", add_runs_arguments, cmd_runs)
LOGS = Command(
    "logs",
    "print the output of a run's steps (default: the newest run; each step's latest attempt, every rank), or of "
    "its Ray jobs",
    add_logs_arguments,
    cmd_logs,
)
