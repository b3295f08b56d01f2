"""Datasets too large for one process: written in parts, read back lazily, declared as a train
step's streams (no Ray: the Ray Data side runs in tests/e2e/test_streaming.py)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from raytrain_orch import Artifact, Output, Pipeline
from raytrain_orch.core.errors import PipelineDefinitionError
from raytrain_orch.store.artifacts import write_artifact
from raytrain_orch.store.storage import Storage


def _parts(count: int, rows: int):
    """A generator: each part exists only while it is written."""
    for index in range(count):
        start = index * rows
        yield pa.record_batch({"id": pa.array(range(start, start + rows)), "x": pa.array([0.5] * rows)})


def test_a_dataset_of_parts_is_stored_as_one_parquet_file_per_part_and_reads_back_whole(tmp_path):
    storage = Storage(str(tmp_path / "runs"))
    artifact = write_artifact(
        storage, ("cache", "prepare", "k1"), "prepare", Output(datasets={"train": _parts(4, 250)}, metrics={"n": 1})
    )
    assert artifact.datasets == ("train",) and artifact.kind == "tables"
    assert storage.listdir("cache", "prepare", "k1", "train") == [f"part-0000{i}.parquet" for i in range(4)]
    again = Artifact.from_dict(artifact.to_dict())  # as a downstream step receives it
    dataset = again.read_dataset("train")
    assert dataset.count_rows() == 1000
    assert sorted(dataset.to_table()["id"].to_pylist()) == list(range(1000))
    assert again.dataset_uri("train") == str(tmp_path / "runs" / "cache" / "prepare" / "k1" / "train")


def test_a_retried_attempt_replaces_the_parts_an_earlier_one_left(tmp_path):
    storage = Storage(str(tmp_path / "runs"))
    write_artifact(storage, ("a",), "prepare", Output(datasets={"train": _parts(5, 10)}))
    artifact = write_artifact(storage, ("a",), "prepare", Output(datasets={"train": _parts(2, 10)}))
    assert artifact.read_dataset("train").count_rows() == 20


def test_dataset_mistakes_are_named(tmp_path):
    storage = Storage(str(tmp_path / "runs"))
    table = pa.table({"id": [1, 2]})
    with pytest.raises(TypeError, match=r"dataset 'train' is a Table; .* a whole table goes in Output\(tables=...\)"):
        write_artifact(storage, ("a",), "prepare", Output(datasets={"train": table}))
    with pytest.raises(TypeError, match=r"part 1 is a dict; yield pyarrow RecordBatch or Table parts"):
        write_artifact(storage, ("b",), "prepare", Output(datasets={"train": iter([table, {"id": 3}])}))
    with pytest.raises(ValueError, match=r"\['train'\] named both a table and a dataset"):
        Output(tables={"train": table}, datasets={"train": iter([table])})
    artifact = write_artifact(storage, ("c",), "prepare", Output(tables={"train": table}))
    with pytest.raises(KeyError, match=r"has no dataset 'train'; it has \[\]"):
        artifact.dataset_uri("train")


def test_a_train_step_declares_its_streams_from_its_inputs():
    pipeline = Pipeline("p")

    @pipeline.task
    def prepare(ctx):
        return None

    @pipeline.train(datasets=["prepare.train", "prepare.val"])
    def train(ctx, prepare):
        return None

    @pipeline.train(name="named", datasets={"rows": "prepare.train"})
    def other(ctx, prepare):
        return None

    assert pipeline.steps["train"].datasets == {"train": ("prepare", "train"), "val": ("prepare", "val")}
    assert pipeline.steps["named"].datasets == {"rows": ("prepare", "train")}


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        (["prepare"], r"datasets entry 'prepare' must name STEP.DATASET, e.g. 'prepare.train'"),
        (["source.train"], r"streams 'source.train' but does not take 'source' as an input; add a parameter 'source'"),
    ],
)
def test_a_bad_stream_declaration_is_refused_with_the_fix(declared, message):
    pipeline = Pipeline("p")
    with pytest.raises(PipelineDefinitionError, match=message):

        @pipeline.train(datasets=declared)
        def train(ctx, prepare):
            return None


def test_a_step_may_return_a_ray_dataset_or_a_dict_of_them():
    dataset = type("Dataset", (), {"__module__": "ray.data.dataset"})()  # known by its type: no Ray here
    assert Output.coerce(dataset, "prepare").datasets == {"data": dataset}
    assert Output.coerce({"train": dataset, "val": dataset}, "prepare").datasets == {"train": dataset, "val": dataset}
    with pytest.raises(TypeError, match=r"step 'prepare' returned list; return a pyarrow.Table, a ray.data.Dataset"):
        Output.coerce([dataset], "prepare")
