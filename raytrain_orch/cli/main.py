"""``rto``: run, resume, validate, plan, status, runs, logs, checkpoints, ui; and for a Ray
cluster submit, jobs, stop (``cli_jobs``).

Exit codes: 0 success, 1 pipeline failed, 2 bad usage or config, 3 resources infeasible.
User errors print as one line on stderr; ``RTO_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Sequence

from raytrain_orch.cli.format import duration, table
from raytrain_orch.core import constants
from raytrain_orch.core.errors import EXIT_INFEASIBLE, EXIT_OK, EXIT_USAGE, ConfigError, OrchError, RunNotFoundError
from raytrain_orch.store.state import RunStore, Status, ray_job_id
from raytrain_orch.store.storage import Storage
from raytrain_orch.core.events import Event

DEFAULT_STORAGE = os.environ.get("RTO_STORAGE", "./rto-runs")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
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
        os._exit(130)


# --- commands ----------------------------------------------------------------------------------


def cmd_run(args) -> int:
    from raytrain_orch.engine.driver import execute, prepare
    from raytrain_orch.cli.live import progress_view

    prepared = prepare(args.config, args.set)
    if args.resume and not args.run_id:
        raise ConfigError("--resume needs --run-id: it continues that run when it exists")
    if args.run_id and _run_exists(prepared.config.storage, args.run_id):
        if not args.resume:
            raise ConfigError(f"run {args.run_id} already exists under {prepared.config.storage}; "
                              f"`rto resume {args.run_id}` continues it, or drop --run-id for a new run")
        # A retried job (KubeRay's backoffLimit): the job that drove the run before has ended.
        previous = RunStore(Storage(prepared.config.storage)).load(args.run_id).driver.get("ray_job_id")
        args.storage, args.after_job = prepared.config.storage, previous if previous != ray_job_id() else None
        return cmd_resume(args)
    with progress_view(prepared.plan) as sink:  # stopped before main's Ctrl-C exit, leaving its last picture
        state = execute(prepared, address=args.address, on_event=sink, run_id=args.run_id, use_cache=not args.no_cache, rerun=args.rerun)
    _print_summary(state)
    return EXIT_OK


def cmd_resume(args) -> int:
    from raytrain_orch.engine.driver import execute, prepare_resume
    from raytrain_orch.cli.live import progress_view

    prepared, previous = prepare_resume(args.run_id, args.storage, after_job=args.after_job)
    with progress_view(prepared.plan) as sink:
        state = execute(prepared, address=args.address, on_event=sink, resume=previous)
    _print_summary(state)
    return EXIT_OK


def _run_exists(storage: str, run_id: str) -> bool:
    store = RunStore(Storage(storage))
    return store.storage.exists(*store.run_path(run_id, constants.STATE_FILE))


def cmd_checkpoints(args) -> int:
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
            detail = " ".join(f"{k}={v:.4g}" for k, v in info.metrics.items() if k != "epoch") if info.valid else info.problem
            rows.append((train_run, info.name, "-" if info.epoch is None else str(info.epoch), "yes" if info.valid else "NO", detail))
    if len(rows) == 1:
        print(f"run {state.run_id} has no checkpoints")
        return EXIT_OK
    table(rows)
    print(f"latest good: {good.path} (epoch {good.epoch})" if good else "latest good: none — every checkpoint fails verification")
    return EXIT_OK


def cmd_validate(args) -> int:
    from raytrain_orch.engine.driver import prepare

    prepared = prepare(args.config, args.set)
    steps = ", ".join(f"{s.name} ({s.kind})" for s in prepared.plan.steps)
    print(f"{args.config}: valid — pipeline {prepared.pipeline.name!r}, steps {steps}")
    return EXIT_OK


def cmd_plan(args) -> int:
    from raytrain_orch.ray import leases, session
    from raytrain_orch.engine.driver import feasibility, prepare
    from raytrain_orch.core.plan import max_concurrent_trials, place

    prepared = prepare(args.config, args.set)
    books = None
    if session.is_local(prepared.config.ray, args.address):
        cluster = session.local_cluster_spec(prepared.config.ray)  # what a fresh local Ray offers: no need to start one
    else:
        started = session.connect(prepared.config.ray, args.address)
        try:
            cluster, books = session.cluster_spec(), leases.admission_snapshot()
        finally:
            if started:
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
        for step, shown in zip(prepared.plan.steps, data["steps"]):
            shown.update(feasible=verdicts[step.name].feasible, admission=admission(step), reason=verdicts[step.name].reason)
        data["cluster"] = {"nodes": [dict(n) for n in cluster.nodes], "node_types": [vars(t) for t in cluster.node_types]}
        data["queue"] = books
        print(json.dumps(data, indent=2))
    else:
        print(f"pipeline {prepared.pipeline.name!r} on {cluster.describe()}")
        if books and (books["granted"] or books["waiting"]):
            print(f"admission queue: {len(books['granted'])} gang(s) running, {queued} waiting")
        rows = [("STEP", "KIND", "AFTER", "GANG", "NOW")]
        for step in prepared.plan.steps:
            rows.append((step.name, step.kind, ",".join(step.inputs) or "-", step.gang.describe(), admission(step)))
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


def cmd_status(args) -> int:
    from raytrain_orch.cli.status import describe

    store = RunStore(Storage(args.storage))
    state = store.load(args.run_id) if args.run_id else store.latest()
    _reconcile(store, [state])
    events = store.events(state.run_id)
    shown = describe(state, events)
    if args.json:
        print(json.dumps(shown, indent=2, default=str))
        return EXIT_OK
    print(f"run {state.run_id}  {shown['status']}  pipeline {state.pipeline}  {duration(state.duration_s)}")
    if state.mlflow.get("run_id"):
        print(f"mlflow: {shown['mlflow_url']}  (run {state.mlflow['run_id']} in {state.mlflow.get('tracking_uri')})")
    rows = [("STEP", "STATUS", "ATTEMPTS", "DURATION", "CACHE", "PROGRESS", "METRICS", "ARTIFACT", "MLFLOW RUN")]
    for name, step in shown["steps"].items():
        s = state.steps[name]
        metrics = " ".join(f"{k}={v:.4g}" for k, v in s.metrics.items() if k != "epoch")
        attempts = f"{s.attempts}/{step['max_attempts']}" if step["max_attempts"] and s.status.active else str(s.attempts)
        progress = f"epoch {step['epoch']}/{step['total_epochs'] or '?'}" if step["epoch"] else "-"
        cache = "hit" if step["cache_hit"] else "-" if s.status in (Status.PENDING, Status.SKIPPED) else "miss"
        rows.append((name, s.status.value, attempts, duration(s.duration_s), cache, progress, metrics or "-", step["artifact_uri"] or "-", s.mlflow_run_id or "-"))
    table(rows)
    _sweeps(events)
    for name, s in state.steps.items():
        if s.waiting:
            print(f"{name}: {s.waiting}")
        if s.error:
            print(f"{name}: {s.error}")
    if state.error and state.status is Status.KILLED:
        print(state.error)
    return EXIT_OK


def _reconcile(store: RunStore, runs: list) -> None:
    """End runs whose driver is gone KILLED (their record and MLflow runs) before showing them."""
    if any(r.status is Status.RUNNING and not r.driver_alive() for r in runs):
        from raytrain_orch.engine.reconcile import reconcile

        for state in reconcile(store, runs):
            print(f"rto: run {state.run_id}: its driver is gone; marked KILLED (resume it with `rto resume {state.run_id}`)", file=sys.stderr)


def _sweeps(events: list[dict]) -> None:
    """Each swept step's trials, from the run's events: the final table, or counts so far."""
    from raytrain_orch.cli.progress import trial_table

    for step in dict.fromkeys(e["step"] for e in events if e["event"] == Event.TRIAL_STARTED):
        attempt = max(e["attempt"] for e in events if e.get("step") == step and e["event"] == Event.TRIAL_STARTED)
        mine = [e for e in events if e.get("step") == step and e.get("attempt") == attempt]
        done = [e for e in mine if e["event"] == Event.SWEEP_FINISHED]
        if done:
            print(trial_table(step, done[-1]["metric"], done[-1]["trials"]))
            continue
        count = {kind: len({e["trial"] for e in mine if e["event"] == f"trial_{kind}"}) for kind in ("started", "finished", "stopped")}
        print(f"{step}: sweep running: {count['started']} trial(s) started, {count['finished']} finished, {count['stopped']} stopped early")


def cmd_runs(args) -> int:
    store = RunStore(Storage(args.storage))
    runs = store.list()
    _reconcile(store, runs)
    if args.json:
        print(json.dumps([{"run_id": r.run_id, "pipeline": r.pipeline, "status": r.shown_status, "started": r.created_at, "duration_s": r.duration_s} for r in runs], indent=2))
        return EXIT_OK
    rows = [("RUN ID", "PIPELINE", "STATUS", "STARTED", "DURATION")]
    for r in runs:
        rows.append((r.run_id, r.pipeline, r.shown_status, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at)), duration(r.duration_s)))
    table(rows)
    return EXIT_OK


def cmd_logs(args) -> int:
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
    for text in view(store, state, step=args.step, attempt=args.attempt, rank=args.rank):
        print(text, end="", flush=args.follow)
    return EXIT_OK


def cmd_ui(args) -> int:
    from raytrain_orch.core.config import load_config
    from raytrain_orch.engine.driver import interrupt_on_sigterm
    from raytrain_orch.tracking.tracker import Tracker, resolve_tracking_uri

    config = load_config(args.config) if args.config else None
    uri = resolve_tracking_uri(args.tracking_uri or (config.mlflow.tracking_uri if config else "sqlite:///mlflow.db"))
    experiment = config.experiment if config else None
    link = ""
    if experiment:
        found = Tracker(uri).client.get_experiment_by_name(experiment)
        link = f"#/experiments/{found.experiment_id}/runs" if found else ""
    if uri.startswith(("http://", "https://")):
        print(f"MLflow UI: {uri.rstrip('/')}/{link}")
        return EXIT_OK
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    if mlflow_bin is None:
        raise OrchError("the mlflow command is not installed in this environment; run `make install`")
    command = [mlflow_bin, "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    interrupt_on_sigterm()  # stopping rto ui stops the server's whole process group too
    process = subprocess.Popen(command, start_new_session=True)  # own group: its workers stop with it
    base = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    print(f"starting the MLflow UI on {uri} …", flush=True)
    try:
        if _wait_healthy(f"{base}/health", process):
            print(f"MLflow UI: {base}/{link}  (Ctrl-C stops it)", flush=True)
        return process.wait()
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


# --- helpers -----------------------------------------------------------------------------------


def _wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = 120) -> bool:
    """Wait until the server answers, so the printed link works when clicked."""
    import urllib.request

    deadline = time.time() + timeout_s
    while time.time() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return False


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
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. --set train.params.lr=0.01 (repeatable)")

    def storage_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--storage", default=DEFAULT_STORAGE, help="storage root holding the runs (default: %(default)s, or $RTO_STORAGE)")

    p = command("run", cmd_run, "run a pipeline")
    config_args(p)
    p.add_argument("--address", help="join this Ray cluster instead of starting a local one (e.g. auto, HOST:6379)")
    p.add_argument("--no-cache", action="store_true", help="recompute every step, even those with a stored identical result")
    p.add_argument("--rerun", action="append", default=[], metavar="STEP", help="recompute STEP and everything downstream of it (repeatable)")
    p.add_argument("--run-id", help="the new run's id (default: NAME-DATE-TIME-RANDOM); `rto submit` sets it")
    p.add_argument("--resume", action="store_true", help="with --run-id: if that run exists, resume it instead (for jobs a scheduler retries)")
    p = command("resume", cmd_resume, "continue an interrupted or failed run: finished steps are kept, training continues from its latest good checkpoint")
    p.add_argument("run_id", help="run id (see `rto runs`)")
    p.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    p.add_argument("--after-job", metavar="JOB_ID", help="the Ray job that drove the run has ended, wherever its driver was (`rto submit` sets it)")
    storage_arg(p)
    p = command("checkpoints", cmd_checkpoints, "list a run's checkpoints with epoch, metrics and whether they verify")
    p.add_argument("run_id", help="run id (see `rto runs`)")
    storage_arg(p)
    p = command("validate", cmd_validate, "check a config and its pipeline without running anything")
    config_args(p)
    p = command("plan", cmd_plan, "print the DAG, each step's gang, and whether it is feasible, must wait, or is infeasible on the cluster")
    config_args(p)
    p.add_argument("--address", help="check against this Ray cluster (default: a local Ray)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = command("status", cmd_status, "show a run's steps (default: the newest run)")
    p.add_argument("run_id", nargs="?", help="run id (see `rto runs`)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    storage_arg(p)
    p = command("runs", cmd_runs, "list runs, newest first")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    storage_arg(p)
    p = command("logs", cmd_logs, "print the output of a run's steps (default: the newest run; each step's latest attempt, every rank), or of its Ray jobs")
    p.add_argument("run_id", metavar="JOB_OR_RUN", nargs="?", help="run id (see `rto runs`), or a Ray job id (rto-RUN-N, see `rto jobs`)")
    p.add_argument("--step", help="only this step")
    p.add_argument("--attempt", type=int, metavar="N", help="this attempt of --step instead of its latest")
    p.add_argument("--rank", type=int, metavar="K", help="only the train worker of this rank")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new output until the run ends")
    p.add_argument("--address", help="the Ray dashboard's URL (http://HEAD:8265): show the driver log of the run's Ray jobs (a job id needs no flag with $RAY_ADDRESS)")
    storage_arg(p)
    from raytrain_orch.cli.jobs import add_commands

    add_commands(command, storage_arg)
    p = command("ui", cmd_ui, "start the MLflow UI on the configured store and print its URL")
    p.add_argument("config", nargs="?", help="config whose MLflow store and experiment to open")
    p.add_argument("--tracking-uri", help="MLflow store (default: the config's, else sqlite:///mlflow.db)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    return parser
