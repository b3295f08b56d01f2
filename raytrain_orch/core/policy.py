"""Decide, then act: what to do about a failed step attempt.

Pure. The backend describes a failure as plain data (``Failure``); ``decide`` returns a
``Decision``; the runner acts on it. User-code errors fail at once unless their type is listed
in the step's ``retries.on``; infrastructure faults (a worker, actor or node died, an object
was lost, a gang timed out) are retried up to ``retries.max`` times, with exponential backoff
and jitter. A gang that was never granted (infeasible, or over its admission timeout) is not
retried: the queue already waited as long as the user allowed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, Mapping, Sequence

from raytrain_orch.core.errors import EXIT_INFEASIBLE, EXIT_INTERRUPTED, EXIT_OK, EXIT_PIPELINE_FAILED, EXIT_USAGE
from raytrain_orch.core.step_config import RetryConfig

FailureKind = Literal["user", "infra", "resources"]


@dataclass(frozen=True)
class Failure:
    step: str
    attempt: int
    kind: FailureKind
    error_type: str
    message: str
    traceback: str = ""

    def summary(self) -> str:
        return f"{self.error_type}: {self.message}".strip()


@dataclass(frozen=True)
class Decision:
    retry: bool
    delay_s: float = 0.0
    reason: str = ""


def decide(failure: Failure, retries: RetryConfig, rng: random.Random | None = None) -> Decision:
    """Retry ``failure`` or give up; ``attempt`` counts from 1."""
    if failure.kind == "resources":
        return Decision(False, reason="the step's gang was not granted (waiting longer cannot help; see the error)")
    if failure.attempt > retries.max:
        return Decision(False, reason=f"no retries left ({retries.max} allowed)")
    if failure.kind == "user" and failure.error_type not in retries.on:
        return Decision(False, reason="error raised by the step's own code (list its type in retries.on to retry it)")
    delay = retries.backoff_s * 2 ** (failure.attempt - 1)
    jitter = (rng or random).uniform(0.8, 1.2)
    return Decision(
        True, delay_s=delay * jitter, reason=f"{failure.kind} failure, retry {failure.attempt}/{retries.max}"
    )


# --- a submitted pipeline's Ray job ---------------------------------------------------------------

#: Exit codes of ``rto run``/``rto resume`` that mean the pipeline itself failed (its code, its
#: config, its resources): resubmitting the same thing fails the same way.
_PIPELINE_EXIT_CODES: Mapping[int, str] = MappingProxyType(
    {
        EXIT_PIPELINE_FAILED: "the pipeline (or its code) failed",
        EXIT_USAGE: "the config or a command line is invalid",
        EXIT_INFEASIBLE: "a step's resources are infeasible",
    }
)
#: Ray's job error types for a job whose entrypoint never ran, or whose supervisor (and so its
#: node) was lost: the cluster's fault, not the pipeline's.
_CLUSTER_ERRORS: Mapping[str | None, str] = MappingProxyType(
    {
        "JOB_SUPERVISOR_ACTOR_DIED": "its node was lost",
        "JOB_SUPERVISOR_ACTOR_UNKNOWN_FAILURE": "Ray lost track of it",
        "JOB_SUPERVISOR_ACTOR_START_TIMEOUT": "it did not start in time",
        "JOB_SUPERVISOR_ACTOR_START_FAILURE": "it could not be started",
        "JOB_SUPERVISOR_ACTOR_UNSCHEDULABLE": "it could not be scheduled",
    }
)
#: Errors in what was submitted: the environment or the entrypoint command.
_SUBMISSION_ERRORS: Mapping[str | None, str] = MappingProxyType(
    {
        "RUNTIME_ENV_SETUP_FAILURE": (
            "its runtime environment could not be set up (a --pip requirement or the working dir)"
        ),
        "JOB_ENTRYPOINT_COMMAND_START_ERROR": "its entrypoint command could not be started",
    }
)


@dataclass(frozen=True)
class JobEnd:
    """How a Ray job ended, as Ray's job info says (``status``, ``error_type``, ``driver_exit_code``)."""

    status: str
    error_type: str | None = None
    exit_code: int | None = None


@dataclass(frozen=True)
class JobDecision:
    resubmit: bool
    exit_code: int
    reason: str


def decide_job(end: JobEnd, retries_left: int) -> JobDecision:
    """Resubmit a pipeline's ended job (as ``rto resume``), or end with the pipeline's exit code.

    Only the cluster's faults are retried: the driver killed by a signal it was not sent by a
    stop request (a lost or preempted node, the OOM killer), or the job's supervisor lost. A
    failed pipeline, a bad submission and a job someone stopped are final.
    """
    if end.status == "SUCCEEDED":
        return JobDecision(False, EXIT_OK, "the pipeline succeeded")
    if end.status == "STOPPED":
        return JobDecision(
            False,
            EXIT_INTERRUPTED,
            "the job was stopped (rto stop, ray job stop or the dashboard); stops are not retried",
        )
    if end.status != "FAILED":
        return JobDecision(False, EXIT_PIPELINE_FAILED, f"the job ended {end.status}")
    if end.error_type in _SUBMISSION_ERRORS:
        return JobDecision(False, EXIT_USAGE, _SUBMISSION_ERRORS[end.error_type])
    if end.exit_code is not None and end.exit_code in _PIPELINE_EXIT_CODES:
        return JobDecision(
            False, end.exit_code, f"{_PIPELINE_EXIT_CODES[end.exit_code]} (exit code {end.exit_code}); not retried"
        )
    if end.error_type in _CLUSTER_ERRORS:
        cause = f"the job failed: {_CLUSTER_ERRORS[end.error_type]}"
    elif end.exit_code is not None and (end.exit_code < 0 or end.exit_code >= 128):
        cause = f"the job's driver was ended by a signal nobody sent through a stop request (exit code {end.exit_code})"
    else:
        return JobDecision(
            False,
            EXIT_PIPELINE_FAILED,
            f"the job failed (exit code {end.exit_code}, {end.error_type or 'no error type'}); not retried",
        )
    if retries_left <= 0:
        return JobDecision(False, EXIT_PIPELINE_FAILED, f"{cause}; no job retries left (--retries)")
    return JobDecision(True, EXIT_PIPELINE_FAILED, cause)


_MISSING = re.compile(r"ModuleNotFoundError: No module named '([^']+)'")
_STARTED = re.compile(r"\brun \S+ (started|resumed)\b")
_PIP_ERROR = re.compile(r"^\s*ERROR: (.+)$", re.M)


def job_cause(end: JobEnd, log: str, message: str = "", pip: Sequence[str] = ()) -> JobDecision | None:
    """What a failed job's log (and Ray's message) say the cause was, when it is not the pipeline
    itself: the cluster's Python lacking a module before the pipeline started, a ``--pip``
    requirement that did not install. Else the driver's own one-line error, if it printed one.
    None: nothing more to say than ``decide_job``."""
    if end.status != "FAILED":
        return None
    if end.error_type == "RUNTIME_ENV_SETUP_FAILURE":
        said = _PIP_ERROR.findall(message)
        if said:
            return JobDecision(
                False,
                EXIT_USAGE,
                f"--pip could not install on the cluster: {said[-1].strip()}; fix or drop the requirement, or "
                "install it on the cluster's nodes",
            )
        if pip:  # Ray's message stops short of pip's output, which its runtime_env agent logged on the node
            return JobDecision(
                False,
                EXIT_USAGE,
                f"--pip could not install on the cluster: {', '.join(pip)} (pip's output is in the head's Ray logs, "
                "runtime_env_setup-*.log); fix or drop the requirement, or install it on the cluster's nodes",
            )
        return None
    missing = _MISSING.findall(log)
    if missing and not _STARTED.search(log):
        module = missing[-1].split(".")[0]
        return JobDecision(
            False,
            EXIT_USAGE,
            f"the cluster's Python lacks module {module!r} (the job failed before its pipeline started): install "
            f"the project's dependencies on the cluster (its image, or setup_commands in cluster.yaml), or submit "
            f"with --pip {module}",
        )
    said = [line.removeprefix("rto: error: ") for line in log.splitlines() if line.startswith("rto: error: ")]
    if said:
        decided = decide_job(end, 0)
        return JobDecision(False, decided.exit_code, f"{decided.reason} — {said[-1]}")
    return None
