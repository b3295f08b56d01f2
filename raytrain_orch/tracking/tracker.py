"""MLflow: the run hierarchy, metrics, artifacts, models and terminal statuses.

The only module that imports ``mlflow``. Everything goes through ``MlflowClient`` with an
explicit run id — no global "active run" — against the tracking URI given in the config.

Hierarchy: the pipeline run is the parent; each step run is its child (``mlflow.parentRunId``);
a swept step's run is the parent of its trial runs.

The driver is the one writer of runs and metrics: workers send their metrics to it as progress
events, and it applies every tracking operation through an ``Outbox`` — in order, on one
background thread, retried with backoff while the store is unreachable — so logging never
stalls a step and an MLflow outage costs no training. Workers talk to MLflow only for what
must happen where the object lives: logging and registering a model.
"""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from raytrain_orch.core.errors import ConfigError
from raytrain_orch.tracking.champion import ChampionRule

log = logging.getLogger(__name__)

FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"
_PARAM_LIMIT = 6000


class Tracker:
    """A thin handle on one MLflow tracking store."""

    def __init__(self, tracking_uri: str):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def __reduce__(self):
        return (Tracker, (self.tracking_uri,))

    def warm(self) -> None:
        """Open the store (a SQLite store checks its schema on first use)."""
        self.client.search_experiments(max_results=1)

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

    def wait_for_step_run(
        self, experiment: str, rto_run_id: str, step: str, attempt: int, timeout_s: float
    ) -> str | None:
        """The MLflow run of a step attempt of pipeline run ``rto_run_id`` in ``experiment`` (found
        by its tags), waiting up to ``timeout_s`` for the driver to create it; None if it did not."""
        where = (
            f"tags.`rto.run_id` = '{rto_run_id}' AND tags.`rto.step` = '{step}' AND "
            f"tags.`rto.attempt` = '{attempt}' AND tags.`rto.cached` = 'false'"
        )
        deadline, pause = time.monotonic() + timeout_s, 0.02
        while True:
            try:
                found = self.client.get_experiment_by_name(experiment)
                for run in self.client.search_runs([found.experiment_id], where, max_results=1) if found else []:
                    return run.info.run_id
            except Exception as error:  # noqa: BLE001 — unreachable for now: ask again until the deadline
                if not transient(error):
                    raise
            if time.monotonic() + pause > deadline:
                return None
            time.sleep(pause)
            pause = min(2 * pause, 1.0)

    def tag_newest(self, experiment_id: str | None, filter_string: str, tags: Mapping[str, str]) -> str | None:
        """Tag the newest run that matches ``filter_string``; returns its id (None: no such run)."""
        found = (
            self.client.search_runs(
                [experiment_id], filter_string=filter_string, order_by=["attributes.start_time DESC"], max_results=1
            )
            if experiment_id
            else []
        )
        if not found:
            return None
        self.set_tags(found[0].info.run_id, tags)
        return found[0].info.run_id

    def end_open_runs(
        self,
        experiment_id: str | None,
        rto_run_id: str,
        status: str,
        keep: str | None = None,
        params: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
    ) -> list[str]:
        """End every run of pipeline run ``rto_run_id`` still RUNNING (steps, trials, the pipeline
        run itself unless it is ``keep``) with ``status``; returns their names. A trial run with no
        params gets those ``params`` holds for its (``rto.attempt``, ``rto.trial``) tags."""
        if experiment_id is None:
            return []
        found = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`rto.run_id` = '{rto_run_id}' AND attributes.status = 'RUNNING'",
            max_results=10_000,
        )
        ended = []
        for run in found:
            if run.info.run_id != keep:
                tags = run.data.tags
                missing = (params or {}).get((tags.get("rto.attempt", ""), tags.get("rto.trial", "")))
                if missing and not run.data.params:
                    self.log_params(run.info.run_id, missing)
                self.end_run(run.info.run_id, status)
                ended.append(run.info.run_name)
        return ended

    # logging ----------------------------------------------------------------------------
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:_PARAM_LIMIT]) for k, v in sorted(flatten(params).items())]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(
        self, run_id: str, metrics: Mapping[str, float], step: int | None = None, ts: float | None = None
    ) -> None:
        """Log ``metrics`` at MLflow ``step`` (the epoch), stamped ``ts`` (when they were measured)."""
        self.log_metric_batches(run_id, [(metrics, step, ts or time.time())])

    def log_metric_batches(self, run_id: str, batches: list[tuple[Mapping[str, float], int | None, float]]) -> None:
        """Log several ``(metrics, step, ts)`` batches in as few requests as MLflow allows."""
        from mlflow.entities import Metric

        batch = [
            Metric(k, float(v), int(ts * 1000), step or 0) for metrics, step, ts in batches for k, v in metrics.items()
        ]
        for start in range(0, len(batch), 1000):  # MLflow's limit per request
            self.client.log_batch(run_id, metrics=batch[start : start + 1000])

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
        sources: Iterable[str] = (),
    ) -> str | None:
        """Log ``model`` with ``mlflow.pytorch`` on ``run_id`` (its signature inferred from the
        input example); register it; link it to the runs in ``sources`` too (the train runs it came
        from); return the version."""
        import mlflow
        import torch

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        # The logged model belongs to the run's experiment (MLflow puts it in the active one, which in
        # a worker is the default experiment, where the runs table would never find it).
        mlflow.set_experiment(experiment_id=self.client.get_run(run_id).info.experiment_id)
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            run_id=run_id,
            input_example=input_example,
            registered_model_name=registered_name,
            # Pinning requirements skips MLflow's slow requirement inference (it reloads the model).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
        self.link_model(info.model_id, sources)
        version = getattr(info, "registered_model_version", None)
        return str(version) if version is not None else None

    def link_model(self, model_id: str | None, run_ids: Iterable[str]) -> None:
        """Show the logged model ``model_id`` among each run's models (MLflow 3's run outputs)."""
        from mlflow.entities import LoggedModelOutput

        if model_id is None:
            return
        for run_id in run_ids:
            self.client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])

    def log_datasets(self, run_id: str, datasets: Sequence[Mapping[str, str]]) -> None:
        """Log tables as the run's MLflow datasets (the runs table's Dataset column): each a
        ``name``, ``digest``, ``uri`` and ``context`` (``input`` or ``output``)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = [
            DatasetInput(
                Dataset(
                    name=d["name"],
                    digest=d["digest"],
                    source_type=d["uri"].split("://", 1)[0] if "://" in d["uri"] else "local",
                    source=json.dumps({"uri": d["uri"]}),
                ),
                tags=[InputTag("mlflow.data.context", d["context"])],
            )
            for d in datasets
        ]
        if inputs:
            self.client.log_inputs(run_id, datasets=inputs)

    def promote_tags(self, name: str, version: str, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.client.set_model_version_tag(name, version, f"rto.{key}", str(float(value)))

    def promote(self, name: str, version: str, metrics: Mapping[str, float], champion: ChampionRule) -> bool:
        """Record ``metrics`` on the model version and move the rule's alias to it when it beats
        the version that holds the alias now (or none does). Returns whether it moved."""
        from mlflow.exceptions import MlflowException

        self.promote_tags(name, version, metrics)
        value = metrics.get(champion.metric)
        if value is None:
            raise ConfigError(
                f"mlflow.champion.metric {champion.metric!r} is not among the model's metrics {sorted(metrics)}; pass "
                "it to register_model(metrics=...)"
            )
        try:
            holder = self.client.get_model_version_by_alias(name, champion.alias)
        except MlflowException:  # no version holds the alias yet
            holder = None
        if holder is not None and str(holder.version) != str(version):
            held = holder.tags.get(f"rto.{champion.metric}")
            if held is not None and not champion.beats(float(value), float(held)):
                return False
        self.client.set_registered_model_alias(name, champion.alias, str(version))
        return True


# MLflow errors that a retry cannot fix: the operation is dropped with a warning.
_PERMANENT = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_ALREADY_EXISTS",
        "RESOURCE_DOES_NOT_EXIST",
        "INVALID_STATE",
        "BAD_REQUEST",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
    }
)


def transient(error: BaseException) -> bool:
    """Whether a retry may succeed: the store unreachable or overloaded, not the request refused.
    An error from the store's own process (``store_process``) was judged there."""
    judged = getattr(error, "transient", None)
    if isinstance(judged, bool):
        return judged
    if isinstance(error, (OSError, TimeoutError)):
        return True
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        return error.error_code not in _PERMANENT
    return "database is locked" in str(error)


@functools.lru_cache(maxsize=8)
def tracker(tracking_uri: str) -> Tracker:
    """This process's ``Tracker`` of ``tracking_uri``: an ``MlflowClient`` costs ~10 ms to make."""
    return Tracker(tracking_uri)


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
