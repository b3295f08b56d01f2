"""A cache hit checks that its entry is whole before it is used: a step whose stored table or
checkpoint was deleted (by ``rto gc``, a bucket's lifecycle rule, a hand) runs again, with the
right output, on local storage and on a real S3 API (moto's server)."""

from __future__ import annotations

from raytrain_orch.engine.cache import steps_to_compute
from raytrain_orch.store.artifacts import MANIFEST, Artifact
from raytrain_orch.store.state import Status, cache_path
from tests.retained import Retained


def statuses(state) -> dict[str, Status]:
    return {name: step.status for name, step in state.steps.items()}


def test_a_deleted_table_is_computed_again(runs):
    first = runs.run("first", rows=7)
    entry = cache_path("prepare", first.steps["prepare"].cache_key)
    runs.store.storage.fs.delete_file(runs.store.storage.path(*entry, "data.parquet"))

    assert steps_to_compute(runs.plan(rows=7), runs.store) == ["prepare"]  # what `rto plan` says
    again = runs.run("again", rows=7)

    assert runs.ran("again") == ["prepare"]
    assert statuses(again) == {"prepare": Status.SUCCEEDED, "train": Status.CACHED, "evaluate": Status.CACHED}
    assert Artifact.from_dict(again.steps["prepare"].artifact).read_table()["x"].to_pylist() == list(range(7))
    assert steps_to_compute(runs.plan(rows=7), runs.store) == []  # the entry is whole again


def test_a_deleted_checkpoint_trains_again(runs):
    first = runs.run("first", rows=5)
    gone = first.steps["train"].artifact["checkpoint"]
    runs.store.storage.remove_dir(*runs.store.run_path("first", "checkpoints"))

    assert steps_to_compute(runs.plan(rows=5), runs.store) == ["train"]
    again = runs.run("again", rows=5)

    assert runs.ran("again") == ["train"]
    assert statuses(again) == {"prepare": Status.CACHED, "train": Status.SUCCEEDED, "evaluate": Status.CACHED}
    trained = Artifact.from_dict(again.steps["train"].artifact)
    assert trained.checkpoint != gone and "/runs/again/checkpoints/" in trained.checkpoint
    assert trained.metrics == {"loss": 1 / 5}
    assert runs.store.storage.read_json(*cache_path("train", trained_key(again)), MANIFEST)["checkpoint"] == (
        trained.checkpoint
    )


def test_a_stale_entry_is_replaced_whole(tmp_path):
    runs = Retained(str(tmp_path / "runs"), tmp_path)
    first = runs.run("first", rows=3)
    entry = cache_path("evaluate", first.steps["evaluate"].cache_key)
    storage = runs.store.storage
    storage.fs.delete_file(storage.path(*entry, "scores.parquet"))
    storage.write_bytes(b"left behind", *entry, "stray.bin")

    runs.run("again", rows=3)

    assert sorted(storage.entries(*entry)) == [MANIFEST, "scores.parquet"]


def trained_key(state) -> str:
    return state.steps["train"].cache_key
