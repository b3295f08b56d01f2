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


def _preloaded_by_setup(monkeypatch, **env: str) -> list[str]:
    """The modules ``worker_setup`` hands the preload in a worker with ``env``."""
    for name in (warm.TRAIN_ENV_VAR, warm.TRAIN_PRELOAD_VAR, warm.PRELOAD_PATH_VAR):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(warm.PRELOAD_VAR, "jobs.digits")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    handed: list[str] = []

    class Recorded:
        def __init__(self, modules: list[str]):
            self.modules = modules

        def start(self) -> None:
            handed.extend(self.modules)

    monkeypatch.setattr(warm, "Preload", Recorded)
    warm.worker_setup()
    return handed


def test_a_task_worker_preloads_the_pipeline_and_ray_train_s_processes_only_its_core(monkeypatch):
    assert _preloaded_by_setup(monkeypatch) == ["jobs.digits"]
    # Any process of a fit() may become a helper that never runs the step's code: torch and the
    # pipeline's module would cost each ~2 CPU-s for nothing.
    in_train = _preloaded_by_setup(monkeypatch, **{warm.TRAIN_ENV_VAR: "0"})
    assert in_train == list(warm.TRAIN_CORE_MODULES)
    full = _preloaded_by_setup(monkeypatch, **{warm.TRAIN_ENV_VAR: "0", warm.TRAIN_PRELOAD_VAR: "full"})
    assert full == ["jobs.digits", *warm.TRAIN_CORE_MODULES, *warm.TRAIN_MODULES]
