"""A mapped step's MLflow tree, on a real MLflow store (sqlite) through the driver's own tracking
(the outbox and its store process), with the runner's fake backend: no Ray."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from raytrain_orch.cli.wiring import MlflowTracking
from raytrain_orch.engine.driver import prepare
from raytrain_orch.engine.runner import Runner
from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.conftest import write_config
from tests.fakes import FakeBackend

pytestmark = pytest.mark.integration


def test_each_item_is_a_child_run_of_its_mapped_steps_run(tmp_path):
    steps = {"split": {"params": {"names": ["north", "south", "east"]}}, "fit": {"params": {"fail": ["south"]}}}
    prepared = prepare(write_config(tmp_path, "segments", "tests.pipelines.mapped:segments", steps))
    tracking = MlflowTracking(prepared.config.mlflow.tracking_uri)
    store = RunStore(Storage(prepared.config.storage))
    runner = Runner(
        prepared.config, prepared.pipeline, prepared.plan, FakeBackend(), store, tracking=tracking.sink(prepared, store)
    )
    tracking.report_to(runner.note)
    try:
        state = runner.run("r1")
    except Exception:  # noqa: BLE001 — one item fails on purpose
        state = store.load("r1")
    finally:
        tracking.close()

    assert state.status is Status.FAILED
    client = MlflowClient(prepared.config.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(prepared.config.experiment)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    fit = runs["fit"]
    pipeline_run = client.get_run(fit.data.tags["mlflow.parentRunId"])  # the step's run is the pipeline run's child
    assert "mlflow.parentRunId" not in pipeline_run.data.tags and pipeline_run.data.tags["rto.run_id"] == "r1"
    items = {name: run for name, run in runs.items() if name.startswith("fit[")}
    assert sorted(items) == ["fit[0]: north", "fit[1]: south", "fit[2]: east"]
    assert {run.data.tags["mlflow.parentRunId"] for run in items.values()} == {fit.info.run_id}
    assert {name: run.info.status for name, run in items.items()} == {
        "fit[0]: north": "FINISHED",
        "fit[1]: south": "FAILED",
        "fit[2]: east": "FINISHED",
    }
    assert fit.info.status == "FAILED" and fit.data.tags["rto.error"] == "item(s) fit[1] failed"
