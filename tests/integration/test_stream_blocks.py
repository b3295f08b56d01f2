"""A train step's streamed input is read in blocks of a bounded size, whatever the data's size: a
worker's batcher copies the block each batch is cut from, so a block that grew with the data made
a streaming rank's memory grow with it (docs/benchmarks.md, Object storage and streaming)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.data

from raytrain_orch.ray import data

pytestmark = pytest.mark.integration

ROWS_PER_PART, PARTS, COLUMNS = 100_000, 10, 18  # the synthetic pipeline's parts at 10⁶ rows: 14 MB each


def test_a_streamed_input_is_read_in_blocks_no_larger_than_the_bound(local_ray, tmp_path):
    train = tmp_path / "prepare" / "train"
    train.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for part in range(PARTS):
        table = pa.table({f"f{c}": rng.random(ROWS_PER_PART) for c in range(COLUMNS)})
        pq.write_table(table, train / f"part-{part:03d}.parquet", row_group_size=ROWS_PER_PART // 4)
    upstream = SimpleNamespace(dataset_uri=lambda name: str(tmp_path / "prepare" / name))
    step = SimpleNamespace(datasets={"train": ("prepare", "train")})
    chosen = ray.data.DataContext.get_current().target_max_block_size

    streamed = data.streamed_inputs(step, {"prepare": upstream})["train"]

    sizes = [bundle.size_bytes() for bundle in streamed.iter_internal_ref_bundles()]
    assert streamed.count() == ROWS_PER_PART * PARTS  # every row, once
    # A part (~19 MB in memory) at most; with Ray Data's own bound (128 MiB) a read task made blocks of several.
    assert max(sizes) <= 24 * 2**20
    assert ray.data.DataContext.get_current().target_max_block_size == chosen  # the driver's own setting is kept
