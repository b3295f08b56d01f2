"""Errors cross Ray process boundaries (pickle) and map to the CLI's exit codes."""

from __future__ import annotations

import inspect
import pickle

import pytest

from raytrain_orch.core import errors
from raytrain_orch.core.errors import OrchError, StepFailedError

# The exit codes documented in cli.py: 1 pipeline failed, 2 bad usage or config, 3 infeasible.
EXPECTED_EXIT_CODES = {
    "OrchError": 1,
    "ConfigError": 2,
    "PipelineDefinitionError": 2,
    "InfeasibleError": 3,
    "StorageError": 2,
    "RunNotFoundError": 2,
    "SchedulingTimeoutError": 1,
    "TrackingUnavailableError": 1,
    "AdmissionTimeoutError": 1,
    "CapacityLostError": 1,
    "StepFailedError": 1,
    "StepPreempted": 1,
    "PipelineFailedError": 1,
    "ClusterAccessError": 2,
}

ERROR_CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, Exception) and cls.__module__ == errors.__name__
]


def test_every_error_class_has_a_documented_exit_code():
    # A new error class must be added to EXPECTED_EXIT_CODES, i.e. someone decides its exit code.
    assert sorted(cls.__name__ for cls in ERROR_CLASSES) == sorted(EXPECTED_EXIT_CODES)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_exit_code(cls):
    assert issubclass(cls, OrchError)
    assert cls.exit_code == EXPECTED_EXIT_CODES[cls.__name__]


def test_exit_code_constants():
    assert (errors.EXIT_OK, errors.EXIT_PIPELINE_FAILED, errors.EXIT_USAGE, errors.EXIT_INFEASIBLE) == (0, 1, 2, 3)
    assert errors.ConfigError.exit_code == 2
    assert errors.InfeasibleError.exit_code == 3
    assert errors.PipelineFailedError.exit_code == 1


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_pickle_round_trip_keeps_type_and_message(cls):
    message = f"{cls.__name__}: what happened; likely cause; what to change"

    restored = pickle.loads(pickle.dumps(cls(message)))

    assert type(restored) is cls
    assert str(restored) == message
    assert restored.exit_code == cls.exit_code


def test_step_failed_error_keeps_step_and_attempt_across_pickle():
    error = StepFailedError("step train failed on attempt 2: RuntimeError: boom", step="train", attempt=2)

    restored = pickle.loads(pickle.dumps(error))

    assert type(restored) is StepFailedError
    assert str(restored) == "step train failed on attempt 2: RuntimeError: boom"
    assert (restored.step, restored.attempt) == ("train", 2)


def test_pipeline_definition_error_is_a_config_error():
    # `rto validate` reports a bad DAG like a bad config: exit code 2.
    assert issubclass(errors.PipelineDefinitionError, errors.ConfigError)


def test_a_stop_request_unwinds_like_ctrl_c_and_carries_its_signal():
    import signal

    restored = pickle.loads(pickle.dumps(errors.StopRequested(signal.SIGTERM)))

    assert isinstance(restored, KeyboardInterrupt) and not isinstance(restored, Exception)
    assert restored.signum == signal.SIGTERM
