"""The exception hierarchy of raytrain_orch and the CLI exit code each one maps to.

Every message says what happened, the likely cause and what to change. Errors raised by a
step's own code are never wrapped in these: they surface as they are, with the step and
attempt attached by the runner (see ``StepFailedError``).
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_PIPELINE_FAILED = 1
EXIT_USAGE = 2
EXIT_INFEASIBLE = 3
EXIT_INTERRUPTED = 130  # Ctrl-C or a stop signal, as shells report 128 + SIGINT


class OrchError(Exception):
    """Base class of every error this project raises on purpose."""

    exit_code: int = EXIT_PIPELINE_FAILED

    def __reduce__(self) -> tuple[type, tuple[str]]:
        # Exceptions cross Ray process boundaries; rebuild from the message alone.
        return (type(self), (str(self),))


class ConfigError(OrchError):
    """The config file, an override or the pipeline declaration is invalid."""

    exit_code = EXIT_USAGE


class PipelineDefinitionError(ConfigError):
    """The pipeline's steps do not form a valid DAG (cycle, unknown input, bad signature)."""


class InfeasibleError(OrchError):
    """A step's gang of resources can never be placed on the cluster."""

    exit_code = EXIT_INFEASIBLE


class StorageError(OrchError):
    """The storage root cannot be read or written, or a record there is malformed."""

    exit_code = EXIT_USAGE


class RunNotFoundError(OrchError):
    """No run with the given id exists under the storage root."""

    exit_code = EXIT_USAGE


class SchedulingTimeoutError(OrchError):
    """A step's placement group was admitted but Ray did not place it within its timeout."""


class AdmissionTimeoutError(SchedulingTimeoutError):
    """A step waited in the admission queue longer than ``admission.timeout_s``."""


class CapacityLostError(AdmissionTimeoutError):
    """A step's gang fitted the cluster when the run started, but the cluster lost the nodes it
    needs (a node died or was removed) and none that can hold it joined in time."""


class TrackingUnavailableError(OrchError):
    """A step needs MLflow where it runs (to log or register a model) and MLflow is out of reach.
    An infrastructure fault: the step is retried under its retry budget."""


class StepFailedError(OrchError):
    """A step failed; ``__cause__`` holds the step's own exception when there is one."""

    def __init__(self, message: str, step: str = "", attempt: int = 0):
        super().__init__(message)
        self.step = step
        self.attempt = attempt

    def __reduce__(self) -> tuple[type, tuple[str, str, int]]:  # type: ignore[override]  # a subclass's own fields
        return (type(self), (str(self), self.step, self.attempt))


class StepPreempted(OrchError):
    """A train step's attempt gave its gang back to the admission queue (``preempted``: who took it,
    with its priority, queue and the workers the step keeps; ``epoch``: the last one its checkpoint
    holds). Not a failure: the step waits to resume from that checkpoint."""

    def __init__(self, message: str, preempted: dict[str, Any] | None = None, epoch: int | None = None):
        super().__init__(message)
        self.preempted, self.epoch = dict(preempted or {}), epoch

    def __reduce__(self) -> tuple[type, tuple[str, dict[str, Any], int | None]]:  # type: ignore[override]  # its own fields
        return (type(self), (str(self), self.preempted, self.epoch))


class PipelineFailedError(OrchError):
    """At least one step failed; the run's state and MLflow runs record which."""


class ClusterAccessError(OrchError):
    """The Ray cluster's jobs API cannot be reached, or refuses this client (its token)."""

    exit_code = EXIT_USAGE


class StopRequested(KeyboardInterrupt):
    """The driver was asked to stop by a signal (``rto stop``, ``ray job stop``, the system):
    it unwinds like Ctrl-C, and the run's record names the signal, carried here as data."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    def __reduce__(self) -> tuple[type[StopRequested], tuple[int]]:  # pickles with its signal
        return (type(self), (self.signum,))
