"""MLflow: the run hierarchy, metrics, artifacts, models and terminal statuses.

The only module that imports ``mlflow``. Everything goes through ``MlflowClient`` with an
explicit run id — no global "active run" — so the driver, Ray tasks and Ray Train workers all
log to the same runs by id, against the tracking URI given in the config.

Hierarchy: the pipeline run is the parent; each step run is its child (``mlflow.parentRunId``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

log = logging.getLogger(__name__)

FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"
_PARAM_LIMIT = 6000


def resolve_tracking_uri(uri: str, base_dir: str | Path | None = None) -> str:
    """Make a relative ``sqlite:///file.db`` absolute, so every process opens the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = Path(base_dir or Path.cwd()) / uri[len(prefix) :]
        return prefix + str(path.resolve())
    if "://" not in uri:
        raise ConfigError(f"mlflow.tracking_uri {uri!r} is not a URI; use sqlite:///mlflow.db or http://HOST:5000")
    return uri


class Tracker:
    """A thin handle on one MLflow tracking store."""

    def __init__(self, tracking_uri: str):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def __reduce__(self):
        return (Tracker, (self.tracking_uri,))

    # hierarchy --------------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if self.tracking_uri.startswith("sqlite:///"):
            location = Path(self.tracking_uri[len("sqlite:///") :]).parent.joinpath("mlruns").as_uri()
        experiment_id = self.client.create_experiment(name, artifact_location=location)
        # MLflow 3 opens an experiment on its GenAI overview unless it is marked as model training.
        self.client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "custom_model_development")
        return experiment_id

    def start_run(self, experiment_id: str, name: str, tags: Mapping[str, str], parent_id: str | None = None) -> str:
        all_tags = dict(tags)
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(experiment_id, run_name=name, tags=all_tags)
        return run.info.run_id

    def reopen_run(self, run_id: str) -> None:
        """Mark a run RUNNING again (a resumed pipeline keeps its MLflow run)."""
        self.client.update_run(run_id, status="RUNNING")

    def end_run(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def run_status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    # logging ----------------------------------------------------------------------------
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:_PARAM_LIMIT]) for k, v in sorted(flatten(params).items())]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None, synchronous: bool = True) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        if batch:
            self.client.log_batch(run_id, metrics=batch, synchronous=synchronous)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str, local_path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local_path), artifact_path)

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_pytorch_model(
        self,
        run_id: str,
        model: Any,
        *,
        registered_name: str | None = None,
        input_example: Any = None,
    ) -> str | None:
        """Log ``model`` with ``mlflow.pytorch`` on ``run_id``; register it; return the version."""
        import mlflow
        import torch

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            run_id=run_id,
            input_example=input_example,
            registered_model_name=registered_name,
            # Pinning requirements skips MLflow's slow requirement inference (it reloads the model).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
        version = getattr(info, "registered_model_version", None)
        return str(version) if version is not None else None


@functools.lru_cache(maxsize=8)
def tracker(tracking_uri: str) -> Tracker:
    """This process's ``Tracker`` of ``tracking_uri``: an ``MlflowClient`` costs ~10 ms to make."""
    return Tracker(tracking_uri)


def flush_metrics() -> None:
    """Wait until every metric batch queued with ``synchronous=False`` in this process is stored."""
    import mlflow

    try:
        mlflow.flush_async_logging()
    except Exception as error:  # noqa: BLE001 — a tracking outage must not fail the training it records
        log.warning("MLflow: queued metrics could not be stored (%s: %s)", type(error).__name__, error)


def flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping) and item:
            flat.update(flatten(item, f"{name}."))
        else:
            flat[name] = item
    return flat


def git_commit(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def ray_job_id() -> str | None:
    """The submission id when this driver runs as a Ray job (``ray job submit``), else None.

    Ray's job supervisor hands the driver its job config, metadata included, in this variable.
    """
    try:
        job_config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    except json.JSONDecodeError:
        return None
    return (job_config.get("metadata") or {}).get("job_submission_id") or None
