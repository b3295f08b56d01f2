"""A pipeline as a Ray job, through Ray's Jobs API (``JobSubmissionClient``).

Dry-run first: ``job_request`` builds a submission as plain data (entrypoint, runtime_env,
metadata) that ``rto submit --dry-run`` prints and tests check; ``JobsClient`` does the side
effects. ``run_job`` submits, follows the job's log and, when the cluster — not the pipeline —
ended it, resubmits it as ``rto resume RUN_ID`` (``policy.decide_job`` decides), so finished
steps and checkpoints are kept.

Submission ids derive from the run id: attempt N of run R is the Ray job ``rto-R-N``; each job
also carries ``rto.*`` metadata (run id, attempt, config, storage), which ``rto jobs``,
``rto logs`` and ``rto stop`` read back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from raytrain_orch.core import constants
from raytrain_orch.core.errors import EXIT_INTERRUPTED, EXIT_OK, ClusterAccessError, ConfigError, OrchError
from raytrain_orch.core.policy import JobEnd, decide_job, job_cause
from raytrain_orch.core.redact import REDACTED, is_secret
from raytrain_orch.ray.auth import TOKEN_FIX, auth_token

#: Never shipped in the working dir: environments, VCS data, local run storage and MLflow stores.
#: Ray also skips what ``.gitignore`` and ``.rayignore`` list.
EXCLUDES = (
    ".git",
    ".venv",
    "venv",
    "rto-runs",
    "mlflow.db",
    "mlruns",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    "test-artifacts",
)
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_JOB_ID = re.compile(r"^rto-(?P<run_id>.+)-(?P<attempt>\d+)$")


def submission_id(run_id: str, attempt: int) -> str:
    return f"rto-{run_id}-{attempt}"


def parse_submission_id(job_id: str) -> tuple[str, int] | None:
    """(run id, attempt) of a job ``rto submit`` made, else None."""
    found = _JOB_ID.match(job_id)
    return (found["run_id"], int(found["attempt"])) if found else None


# --- the submission, as data ---------------------------------------------------------------------


@dataclass(frozen=True)
class JobRequest:
    """One Ray job of a run: what ``JobSubmissionClient.submit_job`` is given."""

    submission_id: str
    entrypoint: list[str]
    runtime_env: dict[str, Any]
    metadata: dict[str, str]

    @property
    def run_id(self) -> str:
        return self.metadata["rto.run_id"]

    def shown(self) -> dict[str, Any]:
        """The request with every secret (an env var or ``--set`` value whose name looks secret) as ``***``."""
        env = {k: REDACTED if is_secret(k) else v for k, v in self.runtime_env.get("env_vars", {}).items()}
        return {
            "submission_id": self.submission_id,
            "entrypoint": shell_line(self.entrypoint),
            "runtime_env": {**self.runtime_env, "env_vars": env},
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class JobSpec:
    """What ``rto submit`` was asked for; ``request(attempt)`` turns it into each attempt's job."""

    run_id: str
    pipeline: str
    config: str  # relative to the working dir
    overrides: tuple[str, ...]
    storage: str  # as the config says it (resolved on the cluster)
    working_dir: str
    excludes: tuple[str, ...] = EXCLUDES
    pip: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    def request(self, attempt: int) -> JobRequest:
        """Attempt 1 runs the pipeline; a later attempt resumes the run its predecessor left."""
        module = ["python", "-m", "raytrain_orch"]
        secrets: dict[str, str] = {}
        if attempt == 1:
            sets = []
            for override in self.overrides:
                key, _, value = override.partition("=")
                if is_secret(key):  # Ray logs the entrypoint: the value travels in the job's env, expanded by its shell
                    name = f"RTO_SECRET_SET_{len(secrets) + 1}"
                    secrets[name] = value
                    override = f"{key}=${name}"
                sets += ["--set", override]
            entrypoint = [*module, "run", self.config, "--run-id", self.run_id, *sets]
        else:
            previous = submission_id(self.run_id, attempt - 1)
            entrypoint = [*module, "resume", self.run_id, "--storage", self.storage, "--after-job", previous]
        env = {
            "PYTHONUNBUFFERED": "1",  # the job's log follows the driver line by line
            "RTO_PLAIN_PROGRESS": "1",  # a log, not a terminal: timestamped lines, no live view
            "RAY_JOB_STOP_WAIT_TIME_S": str(int(constants.JOB_STOP_WAIT_S)),  # time to end the run KILLED when stopped
            **self.env,
            **secrets,
        }
        runtime_env: dict[str, Any] = {
            "working_dir": self.working_dir,
            "excludes": list(self.excludes),
            "env_vars": env,
        }
        if self.pip:
            runtime_env["pip"] = list(self.pip)
        metadata = {
            "rto.run_id": self.run_id,
            "rto.attempt": str(attempt),
            "rto.pipeline": self.pipeline,
            "rto.config": self.config,
            "rto.storage": self.storage,
            "rto.env": ",".join(sorted(self.env)),  # names only
        }
        return JobRequest(submission_id(self.run_id, attempt), entrypoint, runtime_env, metadata)


def shell_line(argv: Sequence[str]) -> str:
    """``argv`` for the job's shell, quoted, except that ``$RTO_SECRET_SET_N`` is expanded there."""
    return " ".join(
        f'{shlex.quote(arg[: arg.index("=$RTO_SECRET_SET_") + 1])}"{arg[arg.index("=$RTO_SECRET_SET_") + 1 :]}"'
        if "=$RTO_SECRET_SET_" in arg
        else shlex.quote(arg)
        for arg in argv
    )


def shown_command(argv: Sequence[str]) -> str:
    """``argv`` as a shell line, with the value of each secret ``--set key=value`` as ``***``."""
    shown = []
    for i, arg in enumerate(argv):
        key, eq, _ = arg.partition("=")
        shown.append(f"{key}={REDACTED}" if i and argv[i - 1] == "--set" and eq and is_secret(key) else arg)
    return shlex.join(shown)


def config_in_working_dir(config: str | Path, working_dir: str | Path) -> str:
    """The config's path relative to the working dir that is shipped, which must contain it."""
    relative = os.path.relpath(Path(config).resolve(), Path(working_dir).resolve())
    if relative.startswith(os.pardir):
        raise ConfigError(
            f"config {config} is outside the working dir {working_dir} that is shipped to the cluster; "
            "move it into the project or pass --working-dir"
        )
    return relative


def pip_requirements(items: Sequence[str]) -> tuple[str, ...]:
    """``--pip`` values: requirement specs, or requirements files whose lines are read."""
    found: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_file():
            lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
            found.extend(line for line in lines if line)
        elif item.endswith((".txt", ".in")) or os.sep in item:
            raise ConfigError(
                f"--pip {item}: no such requirements file; pass a requirement (e.g. --pip 'mlflow>=3') or an existing "
                "file"
            )
        else:
            found.append(item)
    return tuple(found)


def passed_env(items: Sequence[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``--env NAME=VALUE`` as given, ``--env NAME`` from this environment."""
    environ = os.environ if environ is None else environ
    env: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(
                f"--env {item.split('=')[0]!r}: not an environment variable name; pass NAME or NAME=VALUE"
            )
        if not eq:
            if name not in environ:
                raise ConfigError(f"--env {name}: {name} is not set here; set it or pass {name}=VALUE")
            value = environ[name]
        env[name] = value
    return env


def is_relative_path(storage: str) -> bool:
    """A relative local path: on a cluster it resolves in the job's working dir, not here."""
    return "://" not in storage and not os.path.isabs(storage)


def storage_warnings(storage: str, tracking_uri: str) -> list[str]:
    """What will not be shared on a cluster: a relative local storage root or sqlite store."""
    notes = []
    if is_relative_path(storage):
        notes.append(
            f"storage {storage} is a relative path: on the cluster it is a directory inside the job's working dir on "
            "the head node, not shared with other nodes; use a shared mount or URI (--set storage=s3://BUCKET/rto-runs)"
        )
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        notes.append(
            f"MLflow store {tracking_uri} is a relative sqlite file: on the cluster it lands in the job's working dir; "
            "run an MLflow server every node reaches (--set mlflow.tracking_uri=http://HEAD:5000)"
        )
    return notes


# --- the cluster -------------------------------------------------------------------------------


def cluster_address(address: str | None) -> str:
    address = address or os.environ.get("RAY_ADDRESS", "")
    if not address:
        raise ConfigError("no cluster given: pass --address http://HEAD:8265 (the Ray dashboard) or set RAY_ADDRESS")
    if "://" not in address:
        raise ConfigError(
            f"--address {address}: give the Ray dashboard's URL, e.g. http://{address.split(':')[0]}:8265"
        )
    return address.rstrip("/")


@dataclass(frozen=True)
class JobView:
    """A job as ``rto jobs`` shows it."""

    submission_id: str
    status: str
    run_id: str | None
    attempt: int | None
    entrypoint: str
    start_time: float | None
    end_time: float | None
    end: JobEnd
    message: str
    metadata: dict[str, str]


class JobsClient:
    """Ray's ``JobSubmissionClient`` with the cluster's token, and its errors as one line each."""

    def __init__(self, address: str | None):
        self.address = cluster_address(address)
        self._token, self._token_source = auth_token()
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        with self._errors():
            from ray.job_submission import JobSubmissionClient

            # Ray's client narrates packaging at INFO and warns of the excludes it applies by
            # default anyway; rto says what it submits itself.
            for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
                logging.getLogger(name).setLevel(logging.ERROR)

            self._client = JobSubmissionClient(self.address, headers=headers)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        import requests
        from ray.exceptions import AuthenticationError

        try:
            yield
        except AuthenticationError as e:
            fix = TOKEN_FIX
            if self._token is None:
                raise ClusterAccessError(
                    f"the Ray cluster at {self.address} requires a token and none was found "
                    f"(looked in {self._token_source}); {fix}"
                ) from e
            raise ClusterAccessError(
                f"the Ray cluster at {self.address} refused the token from {self._token_source}; {fix}"
            ) from e
        except (ConnectionError, requests.exceptions.ConnectionError) as e:  # at the first call / a later one
            raise ClusterAccessError(
                f"cannot reach the Ray dashboard at {self.address}; start the cluster (`ray up cluster.yaml`, "
                "`ray start --head`) or pass its dashboard URL with --address http://HEAD:8265"
            ) from e
        except (ValueError, RuntimeError) as e:  # Ray's check here, or the dashboard's on upload
            if "does not exist" in str(e) or "404" in str(e):
                raise ClusterAccessError(f"{e} (at {self.address}); `rto jobs` lists the jobs there") from e
            sized = re.search(r"Package size \(([^)]+)\) exceeds the maximum size of ([\d.]+\s*\w+)", str(e))
            if sized is None:
                raise
            raise ConfigError(
                f"the working dir zips to {sized[1]}, over the {sized[2]} a job may ship: leave data and outputs out "
                "with --exclude PATTERN or a .rayignore file (data belongs in the storage root)"
            ) from None

    def submit(self, request: JobRequest) -> str:
        with self._errors():
            return self._client.submit_job(
                entrypoint=shell_line(request.entrypoint),
                submission_id=request.submission_id,
                runtime_env=request.runtime_env,
                metadata=request.metadata,
            )

    def view(self, job_id: str) -> JobView:
        with self._errors():
            return _view(self._client.get_job_info(job_id))

    def jobs(self, run_id: str | None = None) -> list[JobView]:
        """Jobs on the cluster, oldest first; with ``run_id``, the jobs of that run only."""
        with self._errors():
            shown = [_view(job) for job in self._client.list_jobs() if job.submission_id]
        shown.sort(key=lambda j: j.start_time or 0)
        return [j for j in shown if j.run_id == run_id] if run_id else shown

    def logs(self, job_id: str) -> str:
        with self._errors():
            return self._client.get_job_logs(job_id)

    def follow(self, job_id: str, echo: Callable[[str], None]) -> JobView:
        """Print the job's log as it grows until the job ends; return how it ended."""

        async def tail() -> None:
            async for chunk in self._client.tail_job_logs(job_id):
                echo(chunk)

        with self._errors():
            try:
                asyncio.run(tail())
            except (OSError, asyncio.TimeoutError, RuntimeError) as e:  # the log stream broke; the job goes on
                print(
                    f"rto: warning: lost the log stream of job {job_id} ({type(e).__name__}); waiting for the job to "
                    "end",
                    file=sys.stderr,
                )
        return self.wait(job_id)

    def wait(self, job_id: str, timeout_s: float | None = None) -> JobView:
        """Poll until the job is terminal (or ``timeout_s`` passed); return its last view."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            view = self.view(job_id)
            if view.status in TERMINAL or (deadline is not None and time.monotonic() > deadline):
                return view
            time.sleep(constants.JOB_POLL_S)

    def stop(self, job_id: str) -> bool:
        with self._errors():
            return self._client.stop_job(job_id)


def _view(job: Any) -> JobView:
    metadata = dict(job.metadata or {})
    run_id, attempt = metadata.get("rto.run_id"), metadata.get("rto.attempt")
    status = getattr(job.status, "value", str(job.status))
    error_type = getattr(job.error_type, "value", job.error_type)
    return JobView(
        submission_id=job.submission_id,
        status=status,
        run_id=run_id,
        attempt=int(attempt) if attempt else None,
        entrypoint=shown_command(shlex.split(job.entrypoint)) if run_id else job.entrypoint,
        start_time=job.start_time / 1000 if job.start_time else None,
        end_time=job.end_time / 1000 if job.end_time else None,
        end=JobEnd(status, error_type, job.driver_exit_code),
        message=(job.message or "").splitlines()[0] if job.message else "",
        metadata=metadata,
    )


def resolve_job(client: JobsClient, job_or_run: str, *, active: bool = False) -> JobView:
    """The job named, or the newest job of the run named (its active one with ``active``)."""
    if job_or_run.startswith(("rto-", "raysubmit_")):
        try:
            return client.view(job_or_run)
        except ClusterAccessError:
            pass  # no such job: a run whose pipeline's name starts so
    jobs = client.jobs(run_id=job_or_run)
    if not jobs:
        raise ClusterAccessError(
            f"no job or run {job_or_run} on the cluster at {client.address}; `rto jobs` lists the jobs there"
        )
    running = [j for j in jobs if j.status not in TERMINAL]
    return (running or jobs)[-1] if active else jobs[-1]


# --- submit, follow, retry ------------------------------------------------------------------------


def run_job(client: JobsClient, spec: JobSpec, *, retries: int, wait: bool, say: Callable[[str], None]) -> int:
    """Submit the run's job; with ``wait``, follow it and resubmit it as ``rto resume`` when the
    cluster ended it, up to ``retries`` times. Return the exit code: the pipeline's (0 while a
    job submitted without ``wait`` runs)."""
    attempt = 1
    while True:
        request = spec.request(attempt)
        job_id = client.submit(request)
        say(f"submitted run {spec.run_id} as Ray job {job_id} to {client.address}: {shell_line(request.entrypoint)}")
        if not wait:
            say(
                f"  follow:  rto logs {job_id} --address {client.address} --follow\n"
                f"  jobs:    rto jobs --address {client.address}\n  stop:    rto stop {spec.run_id} --address "
                f"{client.address}"
            )
            return EXIT_OK
        try:
            view = client.follow(job_id, lambda chunk: print(chunk, end="", flush=True))
        except KeyboardInterrupt:
            say(
                f"stopped following; job {job_id} goes on (`rto stop {spec.run_id} --address {client.address}` stops "
                "it)"
            )
            return EXIT_INTERRUPTED
        decision = decide_job(view.end, retries - (attempt - 1))
        if not decision.resubmit and view.status == "FAILED":
            cause = job_cause(view.end, _tail(client, job_id), view.message, spec.pip)
            if cause is not None:
                say(f"job {job_id} FAILED: {cause.reason}")
                return cause.exit_code
        if not decision.resubmit:
            say(
                f"job {job_id} {view.status}: {decision.reason}"
                + (f" — {view.message}" if view.status != "SUCCEEDED" and view.message else "")
            )
            return decision.exit_code
        attempt += 1
        say(
            f"job {job_id} {view.status}: {decision.reason}; resubmitting as `rto resume {spec.run_id}` (job retry "
            f"{attempt - 1}/{retries})"
        )


def _tail(client: JobsClient, job_id: str) -> str:
    """The end of a job's log (empty when the cluster cannot give it)."""
    try:
        return client.logs(job_id)[-20000:]
    except OrchError:
        return ""


def stop_job(client: JobsClient, view: JobView) -> JobView:
    """Stop the job and wait for its driver to end (``JOB_STOP_WAIT_S`` for it to end the run,
    then Ray kills it)."""
    if view.status in TERMINAL:
        return view
    client.stop(view.submission_id)
    ended = client.wait(view.submission_id, timeout_s=constants.JOB_STOP_WAIT_S + 30)
    if ended.status not in TERMINAL:
        raise OrchError(
            f"job {view.submission_id} is still {ended.status} after the stop request; try again, or `ray job stop` it"
        )
    return ended
