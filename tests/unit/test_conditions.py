"""Conditional steps (``when=``) and optional inputs, through the runner's fake backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raytrain_orch import Pipeline
from raytrain_orch.cli.status import describe
from raytrain_orch.core.config import parse_config
from raytrain_orch.core.errors import PipelineDefinitionError, PipelineFailedError
from raytrain_orch.core.plan import build_plan
from raytrain_orch.core.run_view import RunView
from raytrain_orch.engine.runner import Runner
from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.fakes import FakeBackend
from tests.pipelines import conditions


def run(tmp_path: Path, name: str, steps: dict | None = None):
    pipeline = getattr(conditions, name)
    raw = {
        "name": name,
        "pipeline": f"tests.pipelines.conditions:{name}",
        "storage": str(tmp_path / "runs"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "steps": steps or {},
    }
    config = parse_config(yaml.safe_dump(raw), f"{name}.yaml")
    store, records = RunStore(Storage(config.storage)), []
    runner = Runner(config, pipeline, build_plan(config, pipeline), FakeBackend(), store, on_event=records.append)
    try:
        state = runner.run("r1")
    except PipelineFailedError:
        state = store.load("r1")
    return state, records


def skipped(records: list[dict]) -> dict[str, str]:
    return {r["step"]: r["reason"] for r in records if r["event"] == "step_skipped"}


def test_a_true_condition_runs_the_step_and_all_after_it(tmp_path):
    state, records = run(tmp_path, "gated", {"evaluate": {"params": {"score": 0.9}}})

    assert state.status is Status.SUCCEEDED
    assert {n: s.status for n, s in state.steps.items()} == {n: Status.SUCCEEDED for n in state.steps}
    assert state.steps["report"].metrics == {"score": 0.9, "registered": 1.0}
    assert skipped(records) == {}


def test_a_false_condition_skips_the_step_and_its_dependents_but_not_those_taking_it_as_optional(tmp_path):
    state, records = run(tmp_path, "gated", {"evaluate": {"params": {"score": 0.2}}})

    assert state.status is Status.SUCCEEDED  # a skip is not a failure
    steps = {n: s.status for n, s in state.steps.items()}
    assert steps == {
        "evaluate": Status.SUCCEEDED,
        "register": Status.SKIPPED,
        "notify": Status.SKIPPED,
        "report": Status.SUCCEEDED,
    }
    assert skipped(records) == {"register": "condition false", "notify": "register was skipped"}
    assert state.steps["report"].metrics == {"score": 0.2, "registered": 0.0}  # it received None
    assert state.steps["register"].attempts == 0  # never started: no gang, no MLflow run
    store = RunStore(Storage(str(tmp_path / "runs")))
    shown = describe(state, RunView.of(store.events("r1")))["steps"]  # what `rto status` shows
    assert (shown["register"]["skipped"], shown["notify"]["skipped"]) == ("condition false", "register was skipped")


def test_a_condition_that_raises_fails_the_step_as_its_own_error(tmp_path):
    state, records = run(tmp_path, "raising")

    assert state.status is Status.FAILED
    assert state.steps["publish"].status is Status.FAILED
    failed = next(r for r in records if r["event"] == "step_failed")
    assert failed["kind"] == "user"
    assert failed["error"] == "its condition raised KeyError: 'test_accuracy'"
    assert "KeyError" in failed["traceback"]


def test_a_condition_must_name_upstream_steps_and_optional_inputs_must_be_inputs():
    pipeline = Pipeline("bad")

    @pipeline.task
    def first(ctx):
        return None

    with pytest.raises(PipelineDefinitionError, match="its condition takes 'params'"):
        pipeline.task(lambda ctx: None, name="second", when=lambda params: True)
    with pytest.raises(PipelineDefinitionError, match="optional='elsewhere' is not one of its inputs"):
        pipeline.task(lambda ctx, first: None, name="third", optional=["elsewhere"])
    pipeline.task(lambda ctx: None, name="fourth", when=lambda first: True)
    assert pipeline.steps["fourth"].inputs == ("first",)  # the condition's input is the step's input
    assert pipeline.steps["fourth"].arguments == ()  # which its function does not receive


def test_changing_a_condition_changes_the_steps_code_version():
    one, two = Pipeline("a"), Pipeline("b")
    one.task(lambda ctx: None, name="s", when=lambda x: x.metrics["m"] > 1)
    two.task(lambda ctx: None, name="s", when=lambda x: x.metrics["m"] > 2)
    assert one.steps["s"].code_version() != two.steps["s"].code_version()
