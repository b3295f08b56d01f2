"""``rto submit`` without a cluster: the retry decision, the command's checks and dry run, the
client's errors as one line, what a failed job's log says (the job as data is
``test_submission.py``; the e2e tests submit to a real one)."""

from __future__ import annotations

import json

import pytest

from raytrain_orch.cli.main import main
from raytrain_orch.core.errors import ConfigError
from raytrain_orch.core.policy import JobEnd, decide_job
from raytrain_orch.ray import jobs as submit

from .conftest import REPO

# --- the job-level retry decision --------------------------------------------------------------------


@pytest.mark.parametrize(
    "end, retries_left, resubmit, exit_code",
    [
        (JobEnd("SUCCEEDED", None, 0), 1, False, 0),
        (JobEnd("FAILED", "JOB_ENTRYPOINT_COMMAND_ERROR", 1), 3, False, 1),  # the pipeline's own failure
        (JobEnd("FAILED", "JOB_ENTRYPOINT_COMMAND_ERROR", 2), 3, False, 2),  # a bad config
        (JobEnd("FAILED", "JOB_ENTRYPOINT_COMMAND_ERROR", 3), 3, False, 3),  # infeasible resources
        (JobEnd("FAILED", "JOB_ENTRYPOINT_COMMAND_ERROR", 137), 1, True, 1),  # driver SIGKILLed (via its shell)
        (JobEnd("FAILED", "JOB_ENTRYPOINT_COMMAND_ERROR", -9), 1, True, 1),  # driver SIGKILLed
        (JobEnd("FAILED", "JOB_ENTRYPOINT_COMMAND_ERROR", 130), 1, True, 1),  # SIGTERM from a draining node
        (JobEnd("FAILED", "JOB_SUPERVISOR_ACTOR_DIED", None), 1, True, 1),  # the driver's node was lost
        (JobEnd("FAILED", "JOB_ENTRYPOINT_COMMAND_ERROR", 137), 0, False, 1),  # no retries left
        (JobEnd("FAILED", "RUNTIME_ENV_SETUP_FAILURE", None), 3, False, 2),  # a bad --pip: fix it, do not retry
        (JobEnd("STOPPED", None, None), 3, False, 130),  # someone stopped it
    ],
)
def test_only_the_clusters_faults_are_resubmitted(end, retries_left, resubmit, exit_code):
    decision = decide_job(end, retries_left)

    assert (decision.resubmit, decision.exit_code) == (resubmit, exit_code)
    assert decision.reason


# --- what the user types --------------------------------------------------------------------------


def test_a_local_storage_root_is_refused_on_a_cluster_unless_it_is_a_shared_mount(tmp_path, capsys, monkeypatch):
    """Other nodes never see the head's disk: `rto submit` and `rto run` on a cluster say so in one
    line before anything is sent or started, and leave nothing behind."""
    monkeypatch.chdir(REPO)
    storage = tmp_path / "rto-runs"
    common = ["--set", f"storage={storage}", "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'm.db'}"]
    submit_cmd = ["submit", "configs/digits.yaml", "--dry-run", "--address", "http://127.0.0.1:1", *common]
    submitted = main(submit_cmd)
    ran = main(["run", "configs/digits.yaml", "--set", "ray.address=127.0.0.1:1", *common])
    errors = capsys.readouterr().err.splitlines()
    assert (submitted, ran) == (2, 2)
    assert len(errors) == 2 and all(f"storage {storage} is a local path" in line for line in errors)
    assert all("storage=s3://" in line and "storage_options.shared_mount=true" in line for line in errors)
    assert not storage.exists()  # no run was begun
    shared = ["--set", "storage_options.shared_mount=true"]
    assert main([*submit_cmd, *shared]) == 0


def test_dry_run_prints_the_job_with_secrets_as_stars_and_submits_nothing(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("SOURCE_API_TOKEN", "tok-xyz-123")
    argv = [
        "submit",
        "tests/pipelines/secretive.yaml",
        "--dry-run",
        "--address",
        "http://127.0.0.1:1",
        "--set",
        "steps.fetch.params.api_token=hunter2-abc",
        "--set",
        "storage_options.shared_mount=true",
        "--env",
        "SOURCE_API_TOKEN",
    ]

    assert main(argv) == 0

    out = capsys.readouterr().out
    shown = json.loads(out)
    assert "hunter2-abc" not in out and "tok-xyz-123" not in out
    assert shown["runtime_env"]["env_vars"]["SOURCE_API_TOKEN"] == "***"
    assert shown["entrypoint"].startswith(
        "python -m raytrain_orch run tests/pipelines/secretive.yaml --run-id secretive-"
    )
    assert 'steps.fetch.params.api_token="$RTO_SECRET_SET_1"' in shown["entrypoint"]


def test_a_bad_config_is_refused_before_anything_is_submitted(capsys, monkeypatch):
    monkeypatch.chdir(REPO)

    assert (
        main(["submit", "configs/digits.yaml", "--address", "http://127.0.0.1:1", "--set", "train.params.epochz=3"])
        == 2
    )

    error = capsys.readouterr().err.strip()
    assert (
        error.startswith(
            "rto: error: configs/digits.yaml: unknown key 'steps.train.params.epochz'; did you mean "
            "'steps.train.params.epochs'?"
        )
        and "\n" not in error
    )


def test_a_cluster_gone_mid_wait_is_one_line_with_the_fix():
    import requests

    from raytrain_orch.core.errors import ClusterAccessError

    client = submit.JobsClient.__new__(submit.JobsClient)  # as after connecting; the cluster then goes away
    client.address, client._token, client._token_source = "http://head:8265", "t", "RAY_AUTH_TOKEN"
    with pytest.raises(
        ClusterAccessError, match=r"^cannot reach the Ray dashboard at http://head:8265; start the cluster"
    ):
        with client._errors():
            raise requests.exceptions.ConnectionError("Connection refused")


# --- what a failed job's log says ------------------------------------------------------------------

_IMPORT_FAILED = """Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "/tmp/ray/session/working_dir/_ray_pkg_1/raytrain_orch/__main__.py", line 3, in <module>
    from raytrain_orch.cli import main
  File "/tmp/ray/session/working_dir/_ray_pkg_1/raytrain_orch/store/storage.py", line 12, in <module>
    import pyarrow.fs as pafs
ModuleNotFoundError: No module named 'pyarrow'
"""


def test_a_job_that_could_not_import_a_dependency_is_the_clusters_environment():
    from raytrain_orch.core.policy import JobEnd, job_cause

    cause = job_cause(JobEnd("FAILED", None, 1), _IMPORT_FAILED)

    assert cause is not None and cause.exit_code == 2
    assert cause.reason.startswith("the cluster's Python lacks module 'pyarrow' (the job failed before its pipeline")
    assert "--pip pyarrow" in cause.reason


def test_a_missing_module_after_the_pipeline_started_is_the_pipelines_own_failure():
    from raytrain_orch.core.policy import JobEnd, job_cause

    log = (
        "12:00:01  run digits-1 started\n12:00:09  prepare    FAILED on attempt 1: ModuleNotFoundError: No module "
        "named 'sklearn'\nrto: error: run digits-1 failed at step(s) prepare — prepare: ModuleNotFoundError: No module "
        "named 'sklearn'\n"
    )
    cause = job_cause(JobEnd("FAILED", None, 1), log)

    assert cause is not None and cause.exit_code == 1
    assert cause.reason == (
        "the pipeline (or its code) failed (exit code 1); not retried — run digits-1 failed at step(s) prepare — "
        "prepare: ModuleNotFoundError: No module named 'sklearn'"
    )


def test_a_pip_requirement_that_did_not_install_is_named():
    from raytrain_orch.core.policy import JobEnd, job_cause

    message = (
        "Job failed due to an application error: runtime_env setup failed: Failed to set up runtime environment.\n"
        "Could not create the actor because its associated runtime env failed to be created.\n"
        "  ERROR: Could not find a version that satisfies the requirement nosuchpkg-rto==9.9 (from versions: none)\n"
        "  ERROR: No matching distribution found for nosuchpkg-rto==9.9\n"
    )
    cause = job_cause(JobEnd("FAILED", "RUNTIME_ENV_SETUP_FAILURE", None), "", message)

    assert cause is not None and cause.exit_code == 2
    assert cause.reason == (
        "--pip could not install on the cluster: No matching distribution found for nosuchpkg-rto==9.9; fix or drop "
        "the requirement, or install it on the cluster's nodes"
    )


def test_a_succeeded_or_silent_job_has_no_more_to_say():
    from raytrain_orch.core.policy import JobEnd, job_cause

    assert job_cause(JobEnd("SUCCEEDED", None, 0), _IMPORT_FAILED) is None
    assert job_cause(JobEnd("FAILED", None, 1), "12:00:01  run x started\nKilled\n") is None


@pytest.mark.parametrize("kind", [ValueError, RuntimeError])
def test_a_working_dir_over_the_limit_a_job_may_ship_is_one_line_with_the_fix(kind):
    """Ray refuses an oversized package here (ValueError) or on the dashboard's side (its error
    comes back as a RuntimeError): either way, one line saying what to leave out."""
    from types import SimpleNamespace

    ray_says = (
        "Package size (612.30MiB) exceeds the maximum size of 512.00MiB. To exclude large files, add them to "
        "'.gitignore' or '.rayignore' files, or use the 'excludes' option in the runtime_env"
    )
    client = SimpleNamespace(address="http://head:8265", _token="t", _token_source="RAY_AUTH_TOKEN")

    with pytest.raises(ConfigError) as raised:
        with submit.JobsClient._errors(client):  # type: ignore[arg-type]
            raise kind(ray_says)

    assert str(raised.value) == (
        "the working dir zips to 612.30MiB, over the 512.00MiB a job may ship: leave data and outputs out with "
        "--exclude PATTERN or a .rayignore file (data belongs in the storage root)"
    )


def test_a_job_the_cluster_does_not_have_is_one_line_pointing_at_rto_jobs():
    from types import SimpleNamespace

    from raytrain_orch.core.errors import ClusterAccessError

    # What Ray's JobSubmissionClient raises for the dashboard's 404 (dashboard_sdk._raise_error).
    ray_says = "Request failed with status code 404: Job rto-nosuch-1 does not exist."
    client = SimpleNamespace(address="http://head:8265", _token="t", _token_source="RAY_AUTH_TOKEN")

    with pytest.raises(ClusterAccessError) as raised:
        with submit.JobsClient._errors(client):  # type: ignore[arg-type]
            raise RuntimeError(ray_says)

    assert str(raised.value) == f"{ray_says} (at http://head:8265); `rto jobs` lists the jobs there"
