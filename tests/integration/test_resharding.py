"""A sharded checkpoint restores onto another world size, on real Ray Train: written by 2
workers and restored on 1, then written by 1 and restored on 2. The restored parameters must
equal the saved ones exactly, as a user resuming an elastic step that shrank or grew expects.

The three fits are one train step (one cache key, so one Ray Train run directory) at different
world sizes, as an elastic step's restarts are; each continues from the previous one's latest
checkpoint.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from raytrain_orch.context import StepContext
from raytrain_orch.core.config import load_config
from raytrain_orch.core.plan import build_plan
from raytrain_orch.ray.train import run_train_step
from raytrain_orch.store.artifacts import write_artifact
from raytrain_orch.store.checkpoint import SHARDS_DIR, latest_good
from raytrain_orch.store.storage import Storage
from tests.pipelines import sharded

pytestmark = pytest.mark.integration

CONFIG = "tests/pipelines/sharded.yaml"


@pytest.fixture(scope="module")
def resharded(local_ray, tmp_path_factory):
    """Fit 2 workers × 2 epochs, then 1 worker to epoch 3, then 2 workers to epoch 4."""
    root = tmp_path_factory.mktemp("resharding")
    storage, dumps = Storage(str(root / "rto-runs")), root / "dumps"
    prepare = sharded.pipeline.steps["prepare"]
    tables = prepare.fn(None, prepare.params_model())
    inputs = {"prepare": write_artifact(storage, ("artifacts", "prepare"), "prepare", tables)}
    ctx = StepContext(
        run_id="resharding",
        step="train",
        attempt=1,
        storage_uri=storage.root_uri,
        run_path=("runs", "resharding"),
        artifact_path=("artifacts", "train"),
        tracking_uri="unused",
        system_metrics=False,
    )
    first = None
    artifacts = []
    for workers, epochs in ((2, 2), (1, 3), (2, 4)):
        overrides = [
            f"train.scaling.num_workers={workers}",
            f"train.params.epochs={epochs}",
            f"train.params.dump_dir={dumps}",
        ]
        step = build_plan(load_config(CONFIG, overrides), sharded.pipeline).step("train")
        first = first or step
        step = dataclasses.replace(step, cache_key=first.cache_key)  # the same step, resized
        artifacts.append(run_train_step(step, sharded.pipeline.steps["train"].fn, ctx, inputs))
    return dumps, artifacts, storage


def _load(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_a_checkpoint_written_by_2_workers_restores_on_1_exactly(resharded):
    dumps, *_ = resharded
    assert _equal(_load(dumps / "saved-1-by-2.pt"), _load(dumps / "restored-1-on-1.pt"))


def test_a_checkpoint_written_by_1_worker_restores_on_2_exactly(resharded):
    dumps, *_ = resharded
    saved, restored = _load(dumps / "saved-2-by-1.pt"), _load(dumps / "restored-2-on-2.pt")
    assert _equal(saved, restored)
    assert not _equal(saved, _load(dumps / "saved-3-by-2.pt"))  # and then trained on from there


def test_each_checkpoint_holds_every_ranks_shard_and_consolidates_to_one_state(resharded):
    _, artifacts, storage = resharded
    last = artifacts[-1]
    assert last.metrics["epoch"] == 3
    directory = last.checkpoint_dir()
    assert {p.name for p in (directory / SHARDS_DIR).iterdir()} == {".metadata", "__0_0.distcp", "__1_0.distcp"}
    state = last.load_state()
    assert state["epoch"] == 3 and _equal(state["model"], _load(resharded[0] / "saved-3-by-2.pt"))
    good, _ = latest_good(storage.fs, str(directory.parent))
    assert good.sharded and good.world_size == 2
