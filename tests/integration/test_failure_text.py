"""One failure, one sentence: the console, ``state.json`` and MLflow say the same thing of it.

The runner and its MLflow run tree are real (a SQLite MLflow store), the compute is the fake
backend (no Ray): what is checked is the text each place shows for the failure a step raised.
"""

from __future__ import annotations

import io

from mlflow.tracking import MlflowClient

from raytrain_orch.cli.progress import LinePrinter
from raytrain_orch.cli.wiring import MlflowTracking
from raytrain_orch.core.errors import PipelineFailedError
from raytrain_orch.core.plan import build_plan
from raytrain_orch.engine import driver
from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.pipelines.diamond import pipeline
from tests.unit.test_driver import FakeCompute
from tests.unit.test_runner import config


def test_the_console_state_json_and_mlflow_show_the_same_sentence_for_a_failure(tmp_path):
    cfg = config(tmp_path)
    prepared = driver.Prepared(cfg, pipeline, build_plan(cfg, pipeline))
    compute = FakeCompute([])
    compute.backend.script = {"right": [ValueError("the column 'label' is missing")]}
    console = io.StringIO()

    try:
        driver.execute(
            prepared, compute=compute, tracking=MlflowTracking(cfg.mlflow.tracking_uri), on_event=LinePrinter(console)
        )
    except PipelineFailedError:
        pass

    (state,) = RunStore(Storage(cfg.storage)).list()
    said = state.steps["right"].error
    assert state.status is Status.FAILED
    assert said == "ValueError: the column 'label' is missing"
    assert f"right      FAILED on attempt 1: {said}" in console.getvalue()
    client = MlflowClient(cfg.mlflow.tracking_uri)
    step_runs = client.search_runs(
        [state.mlflow["experiment_id"]], filter_string="tags.`rto.step` = 'right'", max_results=5
    )
    assert [run.data.tags["rto.error"] for run in step_runs] == [said]
