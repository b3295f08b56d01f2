"""``rto submit``, ``rto jobs``, ``rto stop`` and ``rto logs JOB_OR_RUN --address``: the
commands for pipelines run as Ray jobs on a cluster (``ray/jobs.py`` talks to the cluster).

rto's own messages go to stderr as ``rto: …``; a followed job's log goes to stdout as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict

from raytrain_orch.cli.command import Command, add_json_argument, add_storage_argument
from raytrain_orch.cli.format import table
from raytrain_orch.core import constants, submission
from raytrain_orch.core.errors import EXIT_OK, ConfigError, RunNotFoundError
from raytrain_orch.core.text import duration
from raytrain_orch.ray import jobs as submit
from raytrain_orch.store.state import RunState, RunStore, Status
from raytrain_orch.store.storage import Storage


def say(message: str) -> None:
    print(f"rto: {message}", file=sys.stderr, flush=True)


def cmd_submit(args: argparse.Namespace) -> int:
    from raytrain_orch.core.config import load_config
    from raytrain_orch.engine.driver import prepare
    from raytrain_orch.engine.reach import check_cluster_storage
    from raytrain_orch.store.state import new_run_id

    config = load_config(args.config, args.set)  # as written: storage and MLflow resolve on the cluster
    prepared = prepare(args.config, args.set, project_dir=args.working_dir)  # the whole check, before anything is sent
    check_cluster_storage(config)
    excludes = [*submission.EXCLUDES, *args.exclude]
    if submission.is_relative_path(config.storage):
        excludes.append(os.path.normpath(config.storage))  # a run directory is never shipped
    spec = submission.JobSpec(
        run_id=new_run_id(config.name),
        pipeline=prepared.pipeline.name,
        config=submission.config_in_working_dir(args.config, args.working_dir),
        overrides=tuple(args.set),
        storage=config.storage,
        working_dir=args.working_dir,
        excludes=tuple(dict.fromkeys(excludes)),
        pip=submission.pip_requirements(args.pip),
        env=submission.passed_env(args.env),
    )
    if args.dry_run:
        print(json.dumps(spec.request(1).shown(), indent=2))
        return EXIT_OK
    for note in submission.storage_warnings(config.storage, config.mlflow.tracking_uri):
        say(f"warning: {note}")
    client = submit.JobsClient(args.address)
    return submit.run_job(client, spec, retries=args.retries, wait=args.wait or args.retries > 0, say=say)


def cmd_jobs(args: argparse.Namespace) -> int:
    client = submit.JobsClient(args.address)
    jobs = [j for j in client.jobs() if args.all or j.run_id]
    if args.json:
        print(json.dumps([asdict(j) for j in jobs], indent=2, default=str))
        return EXIT_OK
    if not jobs:
        print(f"no {'' if args.all else 'rto '}jobs on {client.address}")
        return EXIT_OK
    rows = [("JOB ID", "RUN ID", "ATTEMPT", "STATUS", "STARTED", "DURATION", "ENTRYPOINT")]
    for j in reversed(jobs):  # newest first, as `rto runs`
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time)) if j.start_time else "-"
        took = duration((j.end_time or time.time()) - j.start_time) if j.start_time else "-"
        rows.append(
            (j.submission_id, j.run_id or "-", str(j.attempt or "-"), j.status, started, took, _short(j.entrypoint))
        )
    table(rows)
    return EXIT_OK


def _short(text: str, width: int = 72) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def is_job_command(args) -> bool:
    """``rto logs``/``rto stop`` go to the cluster with ``--address``, or for a job's id with
    ``RAY_ADDRESS`` set (a run id not found here goes there too: see the commands)."""
    name = args.run_id or ""
    return bool(args.address) or (name.startswith(("rto-", "raysubmit_")) and bool(os.environ.get("RAY_ADDRESS")))


def job_logs(args: argparse.Namespace) -> int:
    """A job's log (the driver's output), or every job of a run, oldest first."""
    client = submit.JobsClient(args.address)
    view = submit.resolve_job(client, args.run_id) if args.run_id else None
    if view is None:
        raise ConfigError("name the job or run: rto logs JOB_OR_RUN --address http://HEAD:8265")
    if args.follow:
        client.follow(view.submission_id, lambda chunk: print(chunk, end="", flush=True))
        return EXIT_OK
    jobs = [view] if view.submission_id == args.run_id else client.jobs(run_id=view.run_id)
    for job in jobs:
        if len(jobs) > 1:
            print(f"=== job {job.submission_id} (attempt {job.attempt}, {job.status}) ===")
        print(client.logs(job.submission_id), end="")
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    if is_job_command(args):
        return _stop_job(args)
    store = RunStore(Storage(args.storage))
    try:
        state = store.load(args.run_id)
    except RunNotFoundError:
        if os.environ.get("RAY_ADDRESS"):  # not here: a run submitted to the cluster
            return _stop_job(args)
        raise
    if state.status is not Status.RUNNING:
        print(f"run {state.run_id} is {state.shown_status}; nothing to stop")
        return EXIT_OK
    if state.driver.get("ray_job_id"):
        raise ConfigError(
            f"run {state.run_id} runs as Ray job {state.driver['ray_job_id']}; stop it with "
            f"`rto stop {state.run_id} --address http://HEAD:8265`"
        )
    if state.driver_alive():
        _terminate(int(state.driver["pid"]), state.run_id)
    _end_killed(store, state.run_id, f"stopped by rto stop (driver pid {state.driver.get('pid')})")
    return EXIT_OK


def _terminate(pid: int, run_id: str) -> None:
    """SIGTERM the local driver (it ends its run KILLED, as on Ctrl-C); SIGKILL it if it hangs."""
    import psutil

    say(f"stopping run {run_id}: SIGTERM to its driver (pid {pid})")
    try:
        process = psutil.Process(pid)
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + constants.JOB_STOP_WAIT_S
        # Ended means gone or a zombie: its parent (a shell, a scheduler) reaps it, not us.
        while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
            if time.monotonic() > deadline:
                say(f"driver pid {pid} did not end within {constants.JOB_STOP_WAIT_S:.0f} s; SIGKILL")
                process.kill()
                break
            time.sleep(0.2)
    except psutil.NoSuchProcess:
        pass


def _stop_job(args: argparse.Namespace) -> int:
    client = submit.JobsClient(args.address)
    view = submit.resolve_job(client, args.run_id, active=True)
    if view.status in submit.TERMINAL:
        print(f"job {view.submission_id} is already {view.status}; nothing to stop")
    else:
        say(f"stopping Ray job {view.submission_id} (its driver gets {constants.JOB_STOP_WAIT_S:.0f} s to end the run)")
        view = submit.stop_job(client, view)
        print(f"job {view.submission_id} {view.status}")
    if not view.run_id:
        return EXIT_OK
    storage = view.metadata.get("rto.storage", "")
    if submission.is_relative_path(storage):
        storage = args.storage  # relative: it lives on the cluster; try the one given here
    try:
        _end_killed(RunStore(Storage(storage)), view.run_id, f"its Ray job {view.submission_id} ended {view.status}")
    except Exception as e:  # noqa: BLE001 — the job is stopped; the run's own driver ended it
        say(
            f"run {view.run_id}: its storage {storage} cannot be read from here ({type(e).__name__}), so its record "
            "was not "
            "checked; a driver that ran out its stop grace period ends KILLED when `rto runs` next sees it on the "
            "cluster"
        )
    return EXIT_OK


def _end_killed(store: RunStore, run_id: str, how: str) -> RunState:
    """After its driver ended: the run KILLED, with its MLflow runs (the driver does it on SIGTERM;
    a driver killed before it could is reconciled here)."""
    from raytrain_orch.cli.wiring import end_mlflow_runs
    from raytrain_orch.engine.reconcile import reconcile

    state = store.load(run_id)
    for _ in range(10):  # the driver's last write may still be on its way
        if state.status is not Status.RUNNING:
            break
        time.sleep(0.5)
        state = store.load(run_id)
    if state.status is Status.RUNNING:
        (state,) = reconcile(store, [state], end_tracking=end_mlflow_runs, driver_ended=how) or (state,)
    print(
        f"run {run_id} {state.status.value}"
        + (f" — {state.error}" if state.status is Status.KILLED and state.error else "")
    )
    return state


_ADDRESS_HELP = "the Ray dashboard's URL, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)"


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="pipeline config, e.g. configs/digits.yaml (inside --working-dir)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value (repeatable)"
    )
    parser.add_argument("--address", help=_ADDRESS_HELP)
    parser.add_argument(
        "--wait", action="store_true", help="stream the job's log and exit with the pipeline's exit code"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=0,
        metavar="N",
        help="resubmit up to N times as `rto resume RUN_ID` when the cluster ends the job (driver killed, node lost); "
        "implies --wait",
    )
    parser.add_argument(
        "--working-dir",
        default=".",
        metavar="DIR",
        help="the project directory shipped to the cluster (default: %(default)s)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="also leave PATTERN out of the shipped working dir (repeatable)",
    )
    parser.add_argument(
        "--pip",
        action="append",
        default=[],
        metavar="REQ_OR_FILE",
        help="a pip requirement or requirements file the cluster lacks, installed for the job (repeatable)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="pass an environment variable to the job, from here or as given (repeatable); secret-looking values are "
        "shown as ***",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the job that would be submitted (secrets as ***) and submit nothing",
    )


def add_jobs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help=_ADDRESS_HELP)
    parser.add_argument("--all", action="store_true", help="every Ray job, not only those rto submitted")
    add_json_argument(parser)


def add_stop_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="JOB_OR_RUN", help="a run id, or a Ray job id (rto-RUN-N)")
    parser.add_argument("--address", help=_ADDRESS_HELP + "; without it, a run driven from this machine is stopped")
    add_storage_argument(parser)


SUBMIT = Command(
    "submit",
    "run a pipeline on a Ray cluster as a Ray job, shipping this project; retry it there after infrastructure failures",
    add_submit_arguments,
    cmd_submit,
)
JOBS = Command("jobs", "list the pipelines' Ray jobs on a cluster, newest first", add_jobs_arguments, cmd_jobs)
STOP = Command(
    "stop",
    "stop a run (its Ray job with --address or a job id): the run and its MLflow runs end KILLED",
    add_stop_arguments,
    cmd_stop,
)
