"""A pipeline as a Ray job, through Ray's Jobs API (``JobSubmissionClient``).

``core.submission`` builds the job as plain data; here are the side effects: ``JobsClient``
submits, lists, follows and stops jobs, with the cluster's token and its errors as one line
each. ``run_job`` submits, follows the job's log and, when the cluster — not the pipeline —
ended it, resubmits it as ``rto resume RUN_ID`` (``policy.decide_job`` decides), so finished
steps and checkpoints are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from raytrain_orch.core import constants
from raytrain_orch.core.errors import EXIT_INTERRUPTED, EXIT_OK, ClusterAccessError, ConfigError, OrchError
from raytrain_orch.core.policy import JobEnd, decide_job, job_cause
from raytrain_orch.core.submission import JobRequest, JobSpec, cluster_address, shell_line, shown_command
from raytrain_orch.core.text import gist
from raytrain_orch.ray.auth import TOKEN_FIX, auth_token

#: A Ray job's statuses once it has ended.
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
#: Ray's check of a working dir it is asked to ship (``ValueError``), or the dashboard's on upload.
_PACKAGE_TOO_BIG = re.compile(r"Package size \(([^)]+)\) exceeds the maximum size of ([\d.]+\s*\w+)")


def _no_such_job(error: Exception) -> bool:
    """Whether the dashboard answered that it has no such job: Ray's client raises a bare
    ``RuntimeError("Request failed with status code 404: Job ID does not exist.")``."""
    return "status code 404" in str(error) or "does not exist" in str(error)


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
        except (ValueError, RuntimeError) as e:  # Ray raises these with a message only (no type of its own)
            if _no_such_job(e):
                raise ClusterAccessError(f"{e} (at {self.address}); `rto jobs` lists the jobs there") from e
            sized = _PACKAGE_TOO_BIG.search(str(e))
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
        message=gist(job.message),
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
