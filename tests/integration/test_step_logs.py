"""`rto logs` on a real local Ray: a task step's and each train worker's own output, kept with the run.

The pipeline is declared here: its task prints a marker and fails its first attempt (retried), its
train step prints on both DDP ranks. One Ray session and one run serve the module.
"""

from __future__ import annotations

import logging

import pytest
from pydantic import Field

from raytrain_orch import Params, Pipeline, StepContext
from raytrain_orch.cli.main import main
from raytrain_orch.cli.wiring import execute
from raytrain_orch.core.errors import EXIT_USAGE
from raytrain_orch.engine.driver import prepare
from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.conftest import REPO, write_config

pytestmark = pytest.mark.integration

pipeline = Pipeline("chatty")


class TalkParams(Params):
    epochs: int = Field(1, ge=1, description="Epochs of the (empty) loop.")


@pipeline.task
def hello(ctx: StepContext) -> dict[str, float]:
    print(f"HELLO-MARKER attempt {ctx.attempt}")
    logging.getLogger("chatty").warning("hello logged a warning")
    if ctx.attempt == 1:
        raise ConnectionError("the first attempt drops its connection on purpose")
    return {"attempts": float(ctx.attempt)}


@pipeline.train(params=TalkParams)
def talk(ctx, params: TalkParams, hello) -> None:
    print(f"TALK-MARKER rank {ctx.rank} of {ctx.world_size}")
    for epoch in range(params.epochs):
        ctx.report({"epoch": epoch}, state={"epoch": epoch})


@pytest.fixture(scope="module")
def run(local_ray, tmp_path_factory):
    """One run of the pipeline; returns (config path, storage root, state)."""
    directory = tmp_path_factory.mktemp("chatty")
    steps = {
        "hello": {"retries": {"max": 1, "backoff_s": 0.1, "on": ["ConnectionError"]}},
        "talk": {"scaling": {"num_workers": 2}, "params": {"epochs": 1}},
    }
    path = write_config(directory, "chatty", f"{__name__}:pipeline", steps)
    state = execute(prepare(path), on_event=lambda record: None)
    assert state.status is Status.SUCCEEDED and state.steps["hello"].attempts == 2
    return path, str(directory / "rto-runs"), state


def rto_logs(capsys, storage: str, *args: str) -> tuple[int, str, str]:
    code = main(["logs", *args, "--storage", storage])
    out, err = capsys.readouterr()
    return code, out, err


def test_logs_show_the_tasks_latest_attempt_and_both_train_ranks(run, capsys):
    _, storage, state = run

    code, out, _ = rto_logs(capsys, storage, state.run_id)

    assert code == 0
    hello = f"==> hello attempt 2 (runs/{state.run_id}/logs/hello/attempt-2.log) <==\nHELLO-MARKER attempt 2\n"
    assert hello in out
    assert out.count("hello logged a warning") == 1  # the logged record, once
    for rank in (0, 1):
        header = f"==> talk attempt 1 rank {rank} (runs/{state.run_id}/logs/talk/attempt-1.rank-{rank}.log) <=="
        assert header in out
        assert out.index(f"TALK-MARKER rank {rank} of 2") > out.index(header)
    assert (
        out.index("hello attempt 2") < out.index("talk attempt 1 rank 0") < out.index("talk attempt 1 rank 1")
    )  # pipeline order
    assert "HELLO-MARKER attempt 1" not in out  # the latest attempt only


def test_the_failed_first_attempt_kept_its_traceback(run, capsys):
    _, storage, _ = run  # the newest run: no RUN_ID needed

    code, out, _ = rto_logs(capsys, storage, "--step", "hello", "--attempt", "1")

    assert code == 0
    assert out.startswith("==> hello attempt 1 (")
    assert "HELLO-MARKER attempt 1\n" in out and "Traceback (most recent call last):" in out
    assert "ConnectionError: the first attempt drops its connection on purpose" in out


def test_one_rank_on_request_and_follow_of_a_finished_run_ends(run, capsys):
    _, storage, state = run

    code, out, _ = rto_logs(capsys, storage, state.run_id, "--step", "talk", "--rank", "1", "--follow")

    assert code == 0
    assert out.startswith(f"==> talk attempt 1 rank 1 (runs/{state.run_id}/logs/talk/attempt-1.rank-1.log) <==\n")
    assert "TALK-MARKER rank 1 of 2" in out and "rank 0" not in out


def test_an_unknown_step_exits_2_naming_the_steps(run, capsys):
    _, storage, state = run

    code, out, err = rto_logs(capsys, storage, state.run_id, "--step", "nosuch")

    assert code == EXIT_USAGE and out == ""
    assert err == f"rto: error: run {state.run_id} has no step 'nosuch' (its steps: hello, talk)\n"


def test_a_cached_rerun_says_where_the_output_came_from(run, capsys):
    path, storage, _ = run
    again = execute(prepare(path), on_event=lambda record: None)
    assert {s.status for s in again.steps.values()} == {Status.CACHED}

    code, out, _ = rto_logs(capsys, storage, again.run_id)

    assert code == 0
    assert out == (
        "hello: cached, no log (the output was reused from an earlier run)\n"
        "talk: cached, no log (the output was reused from an earlier run)\n"
    )


# --- a run id chosen by a scheduler (rto submit, a KubeRay RayJob); shares the module's Ray ---------


def test_a_given_run_id_must_be_new_unless_resume_is_asked_for(local_ray, tmp_path, capsys):
    isolated = [
        "--set",
        f"storage={tmp_path / 'rto-runs'}",
        "--set",
        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    argv = ["run", str(REPO / "tests/pipelines/failing.yaml"), "--run-id", "failing-k8s-001", *isolated]

    assert main(argv) == 1  # the step's own error: the run exists now, FAILED
    capsys.readouterr()
    assert main(argv) == EXIT_USAGE  # the same id again: refused, nothing run
    assert "rto: error: run failing-k8s-001 already exists" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 1  # a retried job: resumes that run (and its step fails again)

    store = RunStore(Storage(str(tmp_path / "rto-runs")))
    assert [r.run_id for r in store.list()] == ["failing-k8s-001"]
    events = [e["event"] for e in store.events("failing-k8s-001")]
    assert events.count("run_started") == 1 and events.count("run_resumed") == 1
    assert store.load("failing-k8s-001").steps["broken"].attempts == 2  # once per driver
