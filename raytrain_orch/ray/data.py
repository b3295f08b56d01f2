"""Ray Data for steps: a task step's ``ray.data.Dataset`` outputs written by Ray Data's own tasks,
and a train step's streamed inputs, read lazily and split across its workers by Ray Train.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import ray.data
from ray.data.context import DEFAULT_TARGET_MAX_BLOCK_SIZE

from raytrain_orch.core.plan import StepPlan
from raytrain_orch.store.artifacts import Artifact, Output
from raytrain_orch.store.storage import Storage

#: The largest block a streamed input is read in. A train worker's batcher copies the block a
#: batch is cut from into one piece (Ray Data's ``try_combine_chunked_columns``), and Ray Data's
#: own bound (128 MiB) let read tasks make blocks that grew with the data: a rank's heap peaked at
#: 62 MB at 10⁶ rows and 179 MB at 4·10⁶, nearly all of it those copies (memray). At 16 MiB it
#: peaked at 56 and 64 MB, at the same speed (docs/benchmarks.md).
STREAM_BLOCK_BYTES = 16 * 2**20


def quiet(dataset: ray.data.Dataset | None = None) -> None:
    """Ray Data's progress bars and per-execution INFO lines would reach the driver's console from
    every worker that runs a dataset; the run's progress view says what a step is doing instead.
    (Workers start with its bars off, ``session.WORKER_ENV``; a dataset keeps the settings of when
    it was made.)"""
    for context in (ray.data.DataContext.get_current(), *([dataset.context] if dataset is not None else [])):
        context.enable_progress_bars = False
        context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def give_back_freed_memory() -> None:
    """On a worker that streams: allocate Arrow buffers with the system allocator. Arrow's default
    (mimalloc) keeps freed pages for reuse, and a stream frees a block's buffers every few batches,
    so the worker's memory grew with the rows it had read (+30 % from 10⁶ to 4·10⁶ rows,
    measured); with the system allocator it stays flat (bench/streaming.py)."""
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())


def write_datasets(output: Output, storage: Storage, path: tuple[str, ...]) -> list[str]:
    """Write the ``ray.data.Dataset`` values of ``output.datasets`` as Parquet directories below
    ``path`` — in parallel by Ray Data's tasks, never gathered here; return their names (the
    other datasets are parts that ``write_artifact`` writes)."""
    written = []
    for name, dataset in output.datasets.items():
        if isinstance(dataset, ray.data.Dataset):
            quiet(dataset)
            storage.remove_dir(*path, name)  # an earlier attempt's files
            dataset.write_parquet(storage.uri(*path, name))
            written.append(name)
    return written


def streamed_inputs(step: StepPlan, inputs: Mapping[str, Artifact]) -> dict[str, Any]:
    """The ``datasets=`` of a train step's ``TorchTrainer``: each declared stream as a lazy
    ``ray.data.read_parquet`` of its upstream dataset, split across the workers."""
    if not step.datasets:
        return {}
    quiet()
    streams = {
        shard: ray.data.read_parquet(inputs[upstream].dataset_uri(name))
        for shard, (upstream, name) in step.datasets.items()
    }
    for dataset in streams.values():  # each dataset has its own copy of the settings (as in ``quiet``)
        if dataset.context.target_max_block_size == DEFAULT_TARGET_MAX_BLOCK_SIZE:  # unless the user chose one
            dataset.context.target_max_block_size = STREAM_BLOCK_BYTES
    return streams
