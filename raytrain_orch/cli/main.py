"""``rto``: run, resume, validate, plan, status, runs, logs, checkpoints, ui; and for a Ray
cluster submit, jobs, stop (``cli_jobs``).

Exit codes: 0 success, 1 pipeline failed, 2 bad usage or config, 3 resources infeasible.
User errors print as one line on stderr; ``RTO_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback
from typing import Sequence

from raytrain_orch.cli.format import DEFAULT_STORAGE, table
from raytrain_orch.cli.runs import cmd_checkpoints, cmd_logs, cmd_runs, cmd_status, runtime_status
from raytrain_orch.cli.ui import cmd_ui
from raytrain_orch.core import constants
from raytrain_orch.core.errors import EXIT_INFEASIBLE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, ConfigError, OrchError
from raytrain_orch.store.state import RunStore, ray_job_id
from raytrain_orch.store.storage import Storage


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
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


# --- commands ----------------------------------------------------------------------------------


def cmd_run(args) -> int:
    from raytrain_orch.cli.live import progress_view
    from raytrain_orch.cli.wiring import execute
    from raytrain_orch.engine.driver import prepare
    from raytrain_orch.engine.reach import check_storage_reach

    prepared = prepare(args.config, [*args.set, *(["ray.runtime=throwaway"] if args.throwaway_ray else [])])
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
    with progress_view(prepared.plan) as sink:  # stopped before main's Ctrl-C exit, leaving its last picture
        state = execute(
            prepared,
            address=args.address,
            on_event=sink,
            run_id=args.run_id,
            use_cache=not args.no_cache,
            rerun=args.rerun,
        )
    _print_summary(state)
    return EXIT_OK


def cmd_resume(args) -> int:
    from raytrain_orch.cli.live import progress_view
    from raytrain_orch.cli.wiring import execute
    from raytrain_orch.engine.driver import prepare_resume

    prepared, previous = prepare_resume(args.run_id, args.storage, after_job=args.after_job)
    if args.throwaway_ray:
        ray_config = prepared.config.ray.model_copy(update={"runtime": "throwaway"})
        prepared = dataclasses.replace(prepared, config=prepared.config.model_copy(update={"ray": ray_config}))
    with progress_view(prepared.plan) as sink:
        state = execute(prepared, address=args.address, on_event=sink, resume=previous)
    _print_summary(state)
    return EXIT_OK


def _run_exists(storage: str, run_id: str) -> bool:
    store = RunStore(Storage(storage))
    return store.storage.exists(*store.run_path(run_id, constants.STATE_FILE))


def cmd_validate(args) -> int:
    from raytrain_orch.engine.driver import prepare

    prepared = prepare(args.config, args.set)
    steps = ", ".join(f"{s.name} ({s.kind})" for s in prepared.plan.steps)
    print(f"{args.config}: valid — pipeline {prepared.pipeline.name!r}, steps {steps}")
    return EXIT_OK


def cmd_plan(args) -> int:
    from raytrain_orch.core.plan import max_concurrent_trials, place
    from raytrain_orch.engine.driver import feasibility, prepare
    from raytrain_orch.ray import leases, session

    prepared = prepare(args.config, args.set)
    books = None
    local = session.is_local(prepared.config.ray, args.address)
    if local:
        cluster = session.local_cluster_spec(prepared.config.ray)  # what a local Ray offers: no need to start one
    else:
        connection = session.connect(prepared.config.ray, args.address)
        try:
            cluster, books = session.cluster_spec(), leases.admission_snapshot()
        finally:
            if connection.initialized:
                session.disconnect()
    verdicts = feasibility(prepared.plan, cluster)
    free_now = books["free"] if books else cluster.nodes
    queued = len(books["waiting"]) if books else 0

    def admission(step) -> str:
        if not verdicts[step.name].feasible:
            return "infeasible"
        return "must-wait" if queued or place(step.gang, free_now) is None else "feasible"

    if args.json:
        data = prepared.plan.to_dict()
        for step, shown in zip(prepared.plan.steps, data["steps"], strict=True):
            shown.update(
                feasible=verdicts[step.name].feasible, admission=admission(step), reason=verdicts[step.name].reason
            )
        data["cluster"] = {
            "nodes": [dict(n) for n in cluster.nodes],
            "node_types": [vars(t) for t in cluster.node_types],
        }
        data["queue"] = books
        print(json.dumps(data, indent=2))
    else:
        print(f"pipeline {prepared.pipeline.name!r} on {cluster.describe()}")
        if local:
            print(runtime_status(prepared.config.ray))
        if books and (books["granted"] or books["waiting"]):
            print(f"admission queue: {len(books['granted'])} gang(s) running, {queued} waiting")
        rows = [("STEP", "KIND", "AFTER", "GANG", "NOW")]
        for step in prepared.plan.steps:
            after = ",".join(step.inputs) or "-"
            rows.append((step.name, step.describe_kind(), after, step.describe_gang(), admission(step)))
        table(rows)
        for step in prepared.plan.steps:
            if step.sweep is not None:
                sweep = step.sweep
                at_once = sweep.max_concurrent_trials or max_concurrent_trials(sweep, step.gang, cluster)
                print(
                    f"sweep of {step.name}: {sweep.num_samples} trial(s) of its gang, {at_once} at a time; "
                    f"{sweep.searcher} search, {sweep.scheduler} scheduler, best {sweep.mode} {sweep.metric}"
                )
        for verdict in verdicts.values():
            if not verdict.feasible:
                print(f"infeasible: {verdict.reason}", file=sys.stderr)
    return EXIT_OK if all(v.feasible for v in verdicts.values()) else EXIT_INFEASIBLE


def cmd_down(args) -> int:
    from raytrain_orch.core.text import duration
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
        up = duration(time.time() - stopped.started_at)
        print(f"stopped the local runtime at {stopped.address} (it was up {up})")
    return EXIT_OK


def _print_summary(state) -> None:
    metrics = {k: v for s in state.steps.values() for k, v in s.metrics.items() if k.startswith("test_")}
    shown = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    print(f"run {state.run_id} {state.status.value}" + (f"  {shown}" if shown else ""))
    print(f"  status:  rto status {state.run_id}\n  mlflow:  rto ui")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rto", description="Run ML training pipelines on Ray, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    def config_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="pipeline config, e.g. configs/digits.yaml")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value, e.g. --set train.params.lr=0.01 (repeatable)",
        )

    def storage_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--storage",
            default=DEFAULT_STORAGE,
            help="storage root holding the runs (default: %(default)s, or $RTO_STORAGE)",
        )

    p = command("run", cmd_run, "run a pipeline")
    config_args(p)
    p.add_argument("--address", help="join this Ray cluster instead of starting a local one (e.g. auto, HOST:6379)")
    p.add_argument(
        "--no-cache", action="store_true", help="recompute every step, even those with a stored identical result"
    )
    p.add_argument(
        "--rerun",
        action="append",
        default=[],
        metavar="STEP",
        help="recompute STEP and everything downstream of it (repeatable)",
    )
    p.add_argument(
        "--throwaway-ray",
        action="store_true",
        help="without --address: a private local Ray that stops with the run, instead of the shared local runtime",
    )
    p.add_argument("--run-id", help="the new run's id (default: NAME-DATE-TIME-RANDOM); `rto submit` sets it")
    p.add_argument(
        "--resume",
        action="store_true",
        help="with --run-id: if that run exists, resume it instead (for jobs a scheduler retries)",
    )
    p = command(
        "resume",
        cmd_resume,
        "continue an interrupted or failed run: finished steps are kept, training continues from its latest good "
        "checkpoint",
    )
    p.add_argument("run_id", help="run id (see `rto runs`)")
    p.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    p.add_argument(
        "--throwaway-ray",
        action="store_true",
        help="without --address: a private local Ray that stops with the run, instead of the shared local runtime",
    )
    p.add_argument(
        "--after-job",
        metavar="JOB_ID",
        help="the Ray job that drove the run has ended, wherever its driver was (`rto submit` sets it)",
    )
    storage_arg(p)
    p = command("checkpoints", cmd_checkpoints, "list a run's checkpoints with epoch, metrics and whether they verify")
    p.add_argument("run_id", help="run id (see `rto runs`)")
    storage_arg(p)
    p = command("validate", cmd_validate, "check a config and its pipeline without running anything")
    config_args(p)
    p = command(
        "plan",
        cmd_plan,
        "print the DAG, each step's gang, and whether it is feasible, must wait, or is infeasible on the cluster",
    )
    config_args(p)
    p.add_argument("--address", help="check against this Ray cluster (default: a local Ray)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = command("down", cmd_down, "stop the shared local Ray runtime now (it stops by itself after ray.idle_stop_s)")
    p.add_argument("--force", action="store_true", help="stop it even while a run is using it (the run is killed)")
    p = command("status", cmd_status, "show a run's steps (default: the newest run)")
    p.add_argument("run_id", nargs="?", help="run id (see `rto runs`)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    storage_arg(p)
    p = command("runs", cmd_runs, "list runs, newest first")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    storage_arg(p)
    p = command(
        "logs",
        cmd_logs,
        "print the output of a run's steps (default: the newest run; each step's latest attempt, every rank), or of "
        "its Ray jobs",
    )
    p.add_argument(
        "run_id",
        metavar="JOB_OR_RUN",
        nargs="?",
        help="run id (see `rto runs`), or a Ray job id (rto-RUN-N, see `rto jobs`)",
    )
    p.add_argument("--step", help="only this step")
    p.add_argument("--attempt", type=int, metavar="N", help="this attempt of --step instead of its latest")
    p.add_argument("--rank", type=int, metavar="K", help="only the train worker of this rank")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new output until the run ends")
    p.add_argument(
        "--address",
        help="the Ray dashboard's URL (http://HEAD:8265): show the driver log of the run's Ray jobs (a job id needs "
        "no flag with $RAY_ADDRESS)",
    )
    storage_arg(p)
    from raytrain_orch.cli import jobs, scaffold

    jobs.add_commands(command, storage_arg)
    scaffold.add_commands(command, "pipeline config, e.g. configs/digits.yaml")
    p = command("ui", cmd_ui, "start the MLflow UI on the configured store and print its URL")
    p.add_argument("config", nargs="?", help="config whose MLflow store and experiment to open")
    p.add_argument("--tracking-uri", help="MLflow store (default: the config's, else sqlite:///mlflow.db)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    return parser
