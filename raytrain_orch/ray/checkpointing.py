"""One train worker's sharded checkpoints: staged in the loop, written and uploaded behind it.

``TrainContext.report(state=...)`` with live modules and optimizers in ``state`` comes here.
Every rank saves its own shard with ``torch.distributed.checkpoint`` into a local staging
directory, and reports it to Ray Train, which merges all ranks' files into one checkpoint
directory on storage (each rank's file names are its own):

1. the previous checkpoint of this worker is waited for (the next one never overtakes it);
2. the state is staged: DCP's ``async_save`` copies this rank's shards off the live tensors,
   and training goes on from here;
3. in the background, DCP writes the files and this rank's manifest (their checksums), then
   Ray Train's ``checkpoint_upload_fn`` uploads them (``CheckpointUploadMode.ASYNC``) and only
   then registers the checkpoint: a restart never restores one whose upload had not finished.

With ``checkpoint.asynchronous: false`` the same steps run before ``report`` returns. The
background collectives of DCP go over a gloo group of their own, so they never interleave with
the training loop's (gloo on CPU, NCCL on GPUs) on the default group.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import pyarrow.fs as pafs
import ray
import ray.train
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from ray.train import CheckpointUploadMode

from raytrain_orch.store.artifacts import CHECKPOINT_STATE_FILE
from raytrain_orch.store.checkpoint import (
    SHARDED,
    SHARDS_DIR,
    VALUES_FILE,
    CheckpointInfo,
    rank_manifest,
    write_manifest,
)
from raytrain_orch.store.state_dicts import Live, load_into, state_dicts


class ShardedCheckpoints:
    """Sharded saves and restores of one train worker (every rank has one, and every rank
    must call ``save`` and ``restore`` together: both are collective)."""

    def __init__(self) -> None:
        self._group: Any = None
        self._previous: Future[None] | None = None

    def _process_group(self) -> Any:
        """The gloo group DCP's collectives use (made on first use, by every rank at once)."""
        if self._group is None and dist.is_initialized():
            self._group = dist.new_group(backend="gloo")
        return self._group

    def wait(self) -> None:
        """Until this worker's previous checkpoint is durable (or failed: its error is raised)."""
        previous, self._previous = self._previous, None
        if previous is not None:
            previous.result()

    def save(
        self,
        live: Mapping[str, Live],
        values: Mapping[str, Any],
        manifest: Mapping[str, Any],
        asynchronous: bool,
        on_durable: Callable[[str, float], None] | None = None,
    ) -> None:
        """Checkpoint ``live`` (sharded) and ``values`` (rank 0's) with ``manifest``'s fields
        (epoch, metrics, …) and report them to Ray Train with ``manifest["metrics"]``.
        ``on_durable(checkpoint_path, seconds)`` is called on rank 0 once its files are on storage."""
        self.wait()
        began = time.perf_counter()
        context = ray.train.get_context()
        rank, world_size = context.get_world_rank(), context.get_world_size()
        staging = Path(tempfile.mkdtemp(prefix="rto-ckpt-"))
        group = self._process_group()
        shards = state_dicts(live)
        if asynchronous:
            written: Future[Any] = dcp.async_save(shards, checkpoint_id=staging / SHARDS_DIR, process_group=group)  # type: ignore[assignment]
        else:
            dcp.save(shards, checkpoint_id=staging / SHARDS_DIR, process_group=group)
            written = Future()
            written.set_result(None)
        del shards  # the staged copy (async) or the files (sync) hold it now
        if rank == 0:
            torch.save(dict(values), staging / VALUES_FILE)
        fields = {**manifest, "layout": SHARDED, "world_size": world_size} if rank == 0 else {"rank": rank}
        durable: Future[None] = Future()
        self._previous = durable

        def upload(checkpoint: ray.train.Checkpoint, dir_name: str) -> ray.train.Checkpoint:
            """Ray Train's upload of this rank's files, on its upload thread (ASYNC) or here (SYNC)."""
            try:
                written.result()
                write_manifest(staging, name=rank_manifest(rank), **fields)
                persisted = context.get_storage().persist_current_checkpoint(checkpoint, dir_name)
            except BaseException as error:
                durable.set_exception(error)
                raise
            durable.set_result(None)
            if rank == 0 and on_durable is not None:
                on_durable(persisted.path, time.perf_counter() - began)
            return persisted

        ray.train.report(
            dict(manifest.get("metrics", {})),
            checkpoint=ray.train.Checkpoint.from_directory(str(staging)),
            checkpoint_upload_mode=CheckpointUploadMode.ASYNC if asynchronous else CheckpointUploadMode.SYNC,
            delete_local_checkpoint_after_upload=True,
            checkpoint_upload_fn=upload,
        )

    def restore(self, live: Mapping[str, Live], checkpoint: CheckpointInfo, fs: pafs.FileSystem) -> dict[str, Any]:
        """Load a verified checkpoint into ``live`` and return its plain values.

        A sharded checkpoint is resharded onto this world size (DCP reads the parts of every
        shard this rank holds); a whole-state one is loaded into the objects whole."""
        with _local_copy(fs, checkpoint.path) as local:
            if checkpoint.sharded:
                shards = state_dicts(live)
                dcp.load(shards, checkpoint_id=local / SHARDS_DIR, process_group=self._process_group())
                load_into(live, shards)
                return dict(torch.load(local / VALUES_FILE, map_location="cpu", weights_only=True))
            state = torch.load(local / CHECKPOINT_STATE_FILE, map_location="cpu", weights_only=True)
            load_into(live, state, full=True)
            return {name: value for name, value in state.items() if name not in live}


@contextmanager
def _local_copy(fs: pafs.FileSystem, path: str) -> Iterator[Path]:
    """A checkpoint directory as a local path: itself on a local filesystem, else a temporary
    copy, removed afterwards."""
    if isinstance(fs, pafs.LocalFileSystem):
        yield Path(path)
        return
    copy = tempfile.mkdtemp(prefix="rto-restore-")
    try:
        pafs.copy_files(path, copy, source_filesystem=fs, use_threads=True)
        yield Path(copy)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
