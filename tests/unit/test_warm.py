"""What warm workers are asked for: the runtime environment Ray Train's actors get, written as
Ray writes an actor's, and where a worker finds the modules it preloads."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ray.train.v2._internal.constants import RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR

from raytrain_orch.ray import session, warm


def test_ray_train_s_runtime_env_is_the_job_s_with_its_variables_written_compact_and_sorted():
    job = json.dumps({"worker_process_setup_hook": "hook", "env_vars": {"Z": "1", "A": "2"}})

    serialized = warm.train_runtime_env(job, propagated={"RAY_WARN_BLOCKING_GET_INSIDE_ASYNC": "0"})

    assert serialized == (
        '{"env_vars":{"A":"2","RAY_WARN_BLOCKING_GET_INSIDE_ASYNC":"0","Z":"1"},"worker_process_setup_hook":"hook"}'
    )


def test_ray_train_s_processes_are_told_apart_by_the_variable_ray_train_sets():
    assert warm.TRAIN_ENV_VAR == RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR
    assert warm.TRAIN_ENV_VAR in json.loads(warm.train_runtime_env("{}"))["env_vars"]


def test_a_worker_preloads_a_module_from_the_directory_the_driver_imports_it_from():
    env = warm.preload_env(["tests.pipelines.diamond", "tests.pipelines.diamond", ""])

    assert env[warm.PRELOAD_VAR] == "tests.pipelines.diamond"
    checkout = str(Path(__file__).resolve().parents[2])
    assert env[warm.PRELOAD_PATH_VAR].split(os.pathsep) == [checkout]
    assert warm.preload_env([]) == {}


def test_a_job_submitted_with_its_own_setup_hook_keeps_it(monkeypatch):
    monkeypatch.setenv(
        "RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"worker_process_setup_hook": "mine"}})
    )
    assert session._job_has_setup_hook()
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"env_vars": {"A": "1"}}}))
    assert not session._job_has_setup_hook()
