"""A fully cached run planned from an earlier run's record, without importing the pipeline's
module; and the record planned again to the same plan."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from raytrain_orch.core.config import load_config
from raytrain_orch.core.errors import PipelineDefinitionError
from raytrain_orch.core.plan import build_plan
from raytrain_orch.core.recorded_plan import record, replan
from raytrain_orch.engine import driver
from raytrain_orch.engine.ports import NoTracking
from raytrain_orch.store.state import Status
from tests.fakes import FakeBackend

from .conftest import DIGITS_YAML

DIAMOND = Path(__file__).parents[1] / "pipelines" / "diamond.py"


def _same(plan, again) -> None:
    assert again.to_dict() == plan.to_dict()
    for step, planned in zip(plan.steps, again.steps, strict=True):
        assert replace(planned, params=None) == replace(step, params=None)  # gangs, retries, hang limits, sweep
        dumped = step.params.model_dump(mode="json") if step.params else None
        assert (planned.params.model_dump(mode="json") if planned.params else None) == dumped


@pytest.mark.parametrize("path", [DIGITS_YAML, Path("configs/digits_sweep.yaml")])
def test_a_recorded_plan_is_planned_again_as_it_was_without_the_pipeline(path):
    from jobs.digits import pipeline

    config = load_config(path)
    plan = build_plan(config, pipeline)

    stand_in, again = replan(config, json.loads(json.dumps(record(plan, pipeline.description))))

    _same(plan, again)
    assert stand_in.name == "digits" and stand_in.description == pipeline.description
    with pytest.raises(PipelineDefinitionError, match="pipeline's module was not imported"):
        stand_in.steps["train"].fn(ctx=None)


# --- a run planned from the record ---------------------------------------------------------------


class Compute:
    """Computes with the fake backend; counts how often it was opened."""

    def __init__(self):
        self.opened = 0

    @contextlib.contextmanager
    def open(self, plan, on_event, resume):
        self.opened += 1
        yield FakeBackend(), {}


class Tracking:
    def sink(self, prepared, store):
        return NoTracking()

    def report_to(self, note) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory with its own copy of the diamond pipeline (``recorded_diamond``) and a
    config; the working directory, as for ``rto run``."""
    shutil.copy(DIAMOND, tmp_path / "recorded_diamond.py")
    steps = {name: {"resources": {"CPU": 1}} for name in ("source", "left", "right", "join")}
    config = {
        "name": "diamond",
        "pipeline": "recorded_diamond:pipeline",
        "storage": str(tmp_path / "runs"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "steps": steps,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("recorded_diamond", None)


def _run(prepared: driver.Prepared, compute: Compute):
    return driver.execute(prepared, compute=compute, tracking=Tracking(), on_event=lambda record: None)


def test_an_unchanged_rerun_is_planned_from_the_record_and_never_imports_the_pipeline(project):
    assert driver.prepare_cached("config.yaml") is None  # nothing recorded yet
    first = driver.prepare("config.yaml")
    _run(first, Compute())
    sys.modules.pop("recorded_diamond")

    again = driver.prepare_cached("config.yaml")
    compute = Compute()
    state = _run(again, compute)

    assert again is not None and again.recorded
    assert again.plan.to_dict() == first.plan.to_dict()
    assert "recorded_diamond" not in sys.modules
    assert compute.opened == 0 and set(s.status for s in state.steps.values()) == {Status.CACHED}


def test_a_changed_source_a_missing_output_or_another_config_plans_from_the_module(project):
    _run(driver.prepare("config.yaml"), Compute())
    assert driver.prepare_cached("config.yaml") is not None

    assert driver.prepare_cached("config.yaml", ["steps.left.retries.max=3"]) is None  # another config
    module = project / "recorded_diamond.py"
    module.write_text(module.read_text() + "\n# edited\n")
    assert driver.prepare_cached("config.yaml") is None  # the module changed

    _run(driver.prepare("config.yaml"), Compute())  # recorded again, as it is now
    assert driver.prepare_cached("config.yaml") is not None
    shutil.rmtree(project / "runs" / "cache" / "join")
    assert driver.prepare_cached("config.yaml") is None  # a step must compute
