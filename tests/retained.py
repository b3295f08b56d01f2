"""Runs of tests/pipelines/retained.py through the runner and the fake backend (no Ray, no
MLflow), on a local or an S3 storage root: what the tests of ``rto gc`` and of the cache's
check of its entries start from."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from raytrain_orch.core.config import parse_config
from raytrain_orch.core.errors import PipelineFailedError
from raytrain_orch.core.plan import Plan, build_plan
from raytrain_orch.engine.runner import Runner
from raytrain_orch.store.state import RunState, RunStore
from raytrain_orch.store.storage import Storage
from tests.fakes import FakeBackend
from tests.pipelines.retained import pipeline

STEPS = ("prepare", "train", "evaluate")


class Retained:
    """Runs of the retained pipeline under one storage root."""

    def __init__(self, root: str, tmp_path: Path):
        self.root, self.tmp_path = root, tmp_path
        self.store = RunStore(Storage(root))
        self.backends: dict[str, FakeBackend] = {}

    def plan(self, rows: int) -> Plan:
        return build_plan(self._config(rows), pipeline)

    def run(self, run_id: str, rows: int = 100, **runner_options) -> RunState:
        """Run the pipeline with ``rows`` rows as run ``run_id``; its record."""
        config = self._config(rows)
        backend = self.backends[run_id] = FakeBackend(checkpoints=("train",))
        runner = Runner(config, pipeline, build_plan(config, pipeline), backend, self.store, **runner_options)
        try:
            runner.run(run_id)
        except PipelineFailedError:
            pass
        time.sleep(0.01)  # the next run starts later: runs order by when they started
        return self.store.load(run_id)

    def ran(self, run_id: str) -> list[str]:
        """The steps the backend ran in run ``run_id`` (cache hits are not run)."""
        return [step for step, _ in self.backends[run_id].calls]

    def files(self) -> dict[str, int]:
        """Every file under the root, with its size."""
        return {path: size for path, size in self.store.storage.entries().items() if size is not None}

    def _config(self, rows: int):
        raw = {
            "name": "retained",
            "pipeline": "tests.pipelines.retained:pipeline",
            "storage": self.root,
            "mlflow": {"tracking_uri": f"sqlite:///{self.tmp_path / 'unused.db'}"},  # the runner gets no tracking
            "steps": {"prepare": {"params": {"rows": rows}}, "train": {}, "evaluate": {}},
        }
        return parse_config(yaml.safe_dump(raw), "retained.yaml")
