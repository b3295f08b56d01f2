"""``StepContext``: the frozen bundle a step receives as ``ctx``, on whichever worker it runs.

It carries ids and URIs, never live objects besides the progress channel (a Ray queue handle,
which pickles). Logging goes to the step's own MLflow run, by id, on the configured store.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .storage import Storage


@dataclass(frozen=True)
class StepContext:
    run_id: str
    step: str
    attempt: int
    storage_uri: str
    run_path: tuple[str, ...]
    artifact_path: tuple[str, ...]
    tracking_uri: str
    mlflow_run_id: str | None = None
    output_dir: Path | None = None
    events: Any = field(default=None, repr=False)  # ray.util.queue.Queue, or None
    trial: str | None = None  # the sweep trial this context runs, if any

    @property
    def storage(self) -> Storage:
        return Storage(self.storage_uri)

    @property
    def run_uri(self) -> str:
        """The run directory (``STORAGE/runs/RUN_ID``)."""
        return self.storage.uri(*self.run_path)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, synchronous: bool = True) -> None:
        """Log metrics to this step's MLflow run; ``synchronous=False`` queues them on MLflow's
        background logger (``flush_metrics`` waits for the queue)."""
        if self.mlflow_run_id:
            self._tracker().log_metrics(self.mlflow_run_id, metrics, step=step, synchronous=synchronous)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file, or a directory's contents, to this step's MLflow run."""
        if not self.mlflow_run_id:
            return
        if Path(local_path).is_dir():
            self._tracker().log_artifacts(self.mlflow_run_id, local_path, artifact_path)
        else:
            self._tracker().log_artifact(self.mlflow_run_id, local_path, artifact_path)

    def register_model(self, model: Any, name: str, input_example: Any = None) -> str | None:
        """Log a PyTorch model to this step's MLflow run and register it as ``name``."""
        if not self.mlflow_run_id:
            return None
        return self._tracker().log_pytorch_model(self.mlflow_run_id, model, registered_name=name, input_example=input_example)

    def emit(self, event: str, **fields: Any) -> None:
        """Send a progress event to the driver (never blocks; dropped if the driver is gone)."""
        if self.events is None:
            return
        try:
            where = {"step": self.step, "attempt": self.attempt, **({"trial": self.trial} if self.trial else {})}
            self.events.put_nowait({"ts": time.time(), "event": event, **where, **fields})
        except Exception:  # noqa: BLE001 — progress is best effort and must never fail a step
            pass

    def warm_tracking(self) -> None:
        """Open this process's MLflow store in the background, so the first log does not wait
        for it (about 1.5 s for a SQLite store)."""
        if self.mlflow_run_id:
            threading.Thread(target=self._tracker, name="rto-mlflow-warm", daemon=True).start()

    def _tracker(self):
        from .tracking import tracker

        return tracker(self.tracking_uri)
