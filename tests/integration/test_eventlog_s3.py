"""Done when: a long run's event log on S3 costs what it costs on a local disk.

The real runner, driven through the fake backend (no Ray), runs one step that reports 5,000
epochs, with its storage root on a real S3 API (moto's server, tests/object_store.py) and on
a local directory, side by side. The run on S3 takes at most 1.2× as long; the bytes written
for its event log are at most 3× the log's size; the driver never holds the whole log.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from raytrain_orch.core.config import parse_config
from raytrain_orch.core.events import encode
from raytrain_orch.core.plan import build_plan
from raytrain_orch.engine.runner import Runner
from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.counting_fs import count_writes
from tests.fakes import FakeBackend
from tests.pipelines.long_run import pipeline

EPOCHS = 5000
EPOCH_S = 0.001  # each epoch's own work: far less than any real epoch's


class Run(NamedTuple):
    wall_s: float
    peak_bytes: int  # the driver process's Python memory at its peak (tracemalloc)
    epochs: list[int]  # as read back
    log_size: int  # the event log's bytes
    log_bytes_written: int  # every byte written under runs/RUN/events/, merges included


def long_run(storage: str, run_id: str) -> Run:
    """One run of the long pipeline with its root at ``storage``, traced by ``tracemalloc``."""
    raw = {
        "name": "long",
        "pipeline": "tests.pipelines.long_run:pipeline",
        "storage": storage,
        "mlflow": {"tracking_uri": "sqlite:///unused.db"},  # never opened: the runner has no tracking
        "steps": {"train": {"params": {"epochs": EPOCHS, "epoch_s": EPOCH_S}}},
    }
    config = parse_config(yaml.safe_dump(raw), "long.yaml")
    store = RunStore(Storage(storage))
    counting = count_writes(store.storage)
    runner = Runner(config, pipeline, build_plan(config, pipeline), FakeBackend(), store, use_cache=False)
    tracemalloc.start()
    try:
        began = time.perf_counter()
        state = runner.run(run_id)
        store.close()
        wall = time.perf_counter() - began
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert state.status is Status.SUCCEEDED
    events = RunStore(Storage(storage)).events(run_id)  # as `rto status` reads them
    size = sum(len(encode(e)) + 1 for e in events)
    return Run(wall, peak, [e["epoch"] for e in events if e["event"] == "epoch"], size, counting.written("/events/"))


@pytest.fixture(scope="module")
def bucket(s3_env) -> str:
    return f"s3://{s3_env.bucket()}/rto-runs"


def test_a_long_run_on_s3_costs_what_it_costs_on_a_local_disk(bucket, tmp_path: Path):
    local = long_run(str(tmp_path), "local")
    s3 = long_run(bucket, "s3")

    assert s3.epochs == local.epochs == list(range(EPOCHS))
    assert s3.wall_s <= 1.2 * local.wall_s, (s3.wall_s, local.wall_s)
    assert s3.log_bytes_written <= 3 * s3.log_size
    # The driver's Python memory at its peak: a buffer of at most 1,000 events, never the log.
    assert s3.peak_bytes < s3.log_size / 2, (s3.peak_bytes, s3.log_size)
