"""A pipeline's Ray job as plain data: what ``rto submit`` sends, before anything is sent.

Dry-run first: ``JobSpec.request(attempt)`` builds each attempt's submission (entrypoint,
runtime_env, metadata) that ``rto submit --dry-run`` prints and tests check; ``ray.jobs`` does
the side effects. Here too: the ``--pip``, ``--env`` and working-dir arguments as the request
needs them, the warnings about storage a cluster would not share, and the cluster's address.

Submission ids derive from the run id: attempt N of run R is the Ray job ``rto-R-N``; each job
also carries ``rto.*`` metadata (run id, attempt, config, storage), which ``rto jobs``,
``rto logs`` and ``rto stop`` read back.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from raytrain_orch.core import constants
from raytrain_orch.core.errors import ConfigError
from raytrain_orch.core.redact import REDACTED, is_secret

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
_JOB_ID = re.compile(r"^rto-(?P<run_id>.+)-(?P<attempt>\d+)$")


def submission_id(run_id: str, attempt: int) -> str:
    return f"rto-{run_id}-{attempt}"


def parse_submission_id(job_id: str) -> tuple[str, int] | None:
    """(run id, attempt) of a job ``rto submit`` made, else None."""
    found = _JOB_ID.match(job_id)
    return (found["run_id"], int(found["attempt"])) if found else None


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


def cluster_address(address: str | None) -> str:
    """The Ray dashboard's URL that jobs are submitted to: ``--address``, else ``RAY_ADDRESS``."""
    address = address or os.environ.get("RAY_ADDRESS", "")
    if not address:
        raise ConfigError("no cluster given: pass --address http://HEAD:8265 (the Ray dashboard) or set RAY_ADDRESS")
    if "://" not in address:
        raise ConfigError(
            f"--address {address}: give the Ray dashboard's URL, e.g. http://{address.split(':')[0]}:8265"
        )
    return address.rstrip("/")
