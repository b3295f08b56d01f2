"""Whose fault an attempt's failure is: the step's own code (user) or the cluster's (infra).

What a fault on a peer looks like to the ranks that survive it: the worker (which must not
report it as the step's own bug) and the driver (which classifies the attempt) ask the same.
"""

from __future__ import annotations

import re
import traceback

import ray

from raytrain_orch.core.errors import (
    AdmissionTimeoutError,
    InfeasibleError,
    OrchError,
    SchedulingTimeoutError,
    TrackingUnavailableError,
)
from raytrain_orch.core.policy import Failure
from raytrain_orch.core.text import gist

# Faults of the infrastructure, not of the step's code: retried under the step's budget.
_INFRA_ERRORS = (
    ray.exceptions.RayActorError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.OwnerDiedError,
    ray.exceptions.LocalRayletDiedError,
    SchedulingTimeoutError,
)

#: What a collective says on the surviving ranks when a peer's process or node is gone.
_COLLATERAL_MARKS = ("gloo", "NCCL", "Connection closed by peer", "Connection reset")


def collateral(error: BaseException) -> bool:
    """Errors survivors raise when a peer worker or its node dies (a collective aborts, a
    connection resets): faults of the infrastructure, left to Ray Train's recovery. Checked by
    name, so the driver needs no torch."""
    dist_error = any(kind.__name__ == "DistError" for kind in type(error).__mro__)  # torch.distributed's
    return isinstance(error, RuntimeError) and (dist_error or any(mark in str(error) for mark in _COLLATERAL_MARKS))


def describe(step: str, attempt: int, error: BaseException) -> Failure:
    """Classify an attempt's exception as the step's own (user) or the cluster's (infra)."""
    if isinstance(error, (AdmissionTimeoutError, InfeasibleError)):
        return Failure(step, attempt, "resources", type(error).__name__, str(error), _format(error))
    if isinstance(error, ray.exceptions.RayTaskError) and isinstance(error.cause, TrackingUnavailableError):
        return Failure(step, attempt, "infra", type(error.cause).__name__, str(error.cause), _remote_traceback(error))
    if isinstance(error, ray.exceptions.RayTaskError):
        # The remote traceback as Python printed it where the step ran.
        return Failure(
            step,
            attempt,
            "user",
            type(error.cause).__name__,
            gist(str(error.cause), line="last"),
            _remote_traceback(error),
        )
    if isinstance(error, _INFRA_ERRORS):
        return Failure(step, attempt, "infra", type(error).__name__, gist(str(error), line="last"), _format(error))
    worker_failures = getattr(error, "worker_failures", None)  # ray.train.WorkerGroupError
    if worker_failures:
        causes = list(worker_failures.values())
        # A peer's death makes the survivors' collectives fail too: those are the same fault.
        own = [c for c in causes if not isinstance(c, _INFRA_ERRORS) and not collateral(_cause(c))]
        first = own[0] if own else causes[0]
        return Failure(
            step,
            attempt,
            "user" if own else "infra",
            _user_type(first),
            gist(str(first), line="last"),
            "\n".join(str(c) for c in causes),
        )
    controller_failure = getattr(error, "controller_failure", None)  # ray.train.ControllerError
    if controller_failure is not None:
        # Ray Train could not (re)start the worker group, e.g. when a lost node's capacity did not
        # come back within RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S: the cluster's fault.
        message = gist(controller_failure, sentence=True)
        return Failure(
            step, attempt, "infra", type(controller_failure).__name__, f"Ray Train: {message}", _format(error)
        )
    if isinstance(error, OrchError):
        return Failure(step, attempt, "infra", type(error).__name__, str(error), _format(error))
    return Failure(step, attempt, "user", type(error).__name__, gist(str(error), line="last"), _format(error))


def _remote_traceback(error: BaseException) -> str:
    """A Ray task error's text is 'ray::NAME() (pid, ip)' then the frames; print it like Python would."""
    where, _, frames = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).partition("\n")
    return f"Traceback (most recent call last), in {where}:\n{frames}"


def _cause(error: BaseException) -> BaseException:
    """The exception Ray wrapped (a worker's, in Ray Train's failure), else the error itself."""
    return getattr(error, "cause", None) or error.__cause__ or error


def _user_type(error: BaseException) -> str:
    """Ray Train wraps a worker's exception; name the user's own exception type."""
    return type(_cause(error)).__name__


def _format(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))
