"""``StepContext``: the frozen bundle a step receives as ``ctx``, on whichever worker it runs.

It carries ids and URIs, never live objects besides the progress channel (a Ray actor handle,
which pickles). Metrics go to the driver over that channel, and the driver logs them to the
step's (or trial's) MLflow run; files and models go to the step's run, by id, from here. The
driver starts a step without waiting for MLflow to create its run: the first file or model the
step logs looks the run up (``StepRun``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from raytrain_orch.core.events import Event, make
from raytrain_orch.store.storage import Storage

#: The least time between two heartbeats a step sends (more often says nothing more).
HEARTBEAT_MIN_S = 0.1


@dataclass
class Heartbeats:
    """A context's heartbeat limiter: when it last sent one (monotonic seconds)."""

    last: float = float("-inf")

    def due(self, now: float) -> bool:
        """Whether a heartbeat at ``now`` says something new; if so, it counts as sent."""
        if now - self.last < HEARTBEAT_MIN_S:
            return False
        self.last = now
        return True


@dataclass
class StepRun:
    """The MLflow run of a context's attempt, as this process found it: the id the driver knew at
    the start, or the one looked up (once) when the step first logs a file or a model."""

    id: str | None = None


@dataclass(frozen=True)
class Registration:
    """A model version ``register_model`` created, and the alias it took, if any."""

    name: str
    version: str
    alias: str | None = None


@dataclass(frozen=True)
class StepContext:
    run_id: str
    step: str
    attempt: int
    storage_uri: str
    run_path: tuple[str, ...]
    artifact_path: tuple[str, ...]
    tracking_uri: str
    mlflow_run_id: str | None = None  # the attempt's MLflow run, when the driver knew it at the start
    mlflow_experiment: str | None = None  # the experiment to look the attempt's run up in otherwise
    output_dir: Path | None = None
    events: Any = field(default=None, repr=False)  # ray.channel.EventChannel (put_nowait), or None
    trial: str | None = None  # the sweep trial this context runs, if any
    champion: tuple[str, str, str] | None = None  # (alias, metric, mode): config mlflow.champion
    system_metrics: bool = True  # config mlflow.system_metrics
    secrets: tuple[str, ...] = field(default=(), repr=False)  # the step's secret param values: masked in its log
    upstream_train_runs: tuple[str, ...] = ()  # the MLflow runs of the train steps it takes as inputs
    item: Any = None  # a mapped step's unit: the item it runs for (map_over=), and its index in the list
    item_index: int | None = None
    beats: Heartbeats = field(default_factory=Heartbeats, repr=False, compare=False)
    found: StepRun = field(default_factory=StepRun, repr=False, compare=False)

    @property
    def storage(self) -> Storage:
        return Storage(self.storage_uri)

    @property
    def run_uri(self) -> str:
        """The run directory (``STORAGE/runs/RUN_ID``)."""
        return self.storage.uri(*self.run_path)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log metrics (at MLflow ``step``) to this step's MLflow run, or its trial's in a sweep.

        They travel to the driver with the progress events and are logged from there, so this
        never waits for MLflow, and an MLflow outage only delays them.
        """
        values = {k: float(v) for k, v in metrics.items()}
        if self.events is not None:
            self.emit(Event.METRICS, metrics=values, index=step)
        elif self.mlflow_run_id:  # no driver to send them to (the context used on its own)
            from raytrain_orch.tracking.tracker import tracker

            tracker(self.tracking_uri).log_metrics(self.mlflow_run_id, values, step=step)

    def heartbeat(self) -> None:
        """Tell the driver this step is making progress. A task step that runs long calls it from
        its loop, so hang detection measures it by its own pace (a train step's reports count
        already). Cheap to call often: at most one is sent every ``HEARTBEAT_MIN_S``."""
        if self.beats.due(time.monotonic()):
            self.emit(Event.HEARTBEAT)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file, or a directory's contents, to this step's MLflow run."""
        found = self._tracker(for_what="log an artifact")
        if found is None:
            return
        tracker, run_id = found
        if Path(local_path).is_dir():
            tracker.log_artifacts(run_id, local_path, artifact_path)
        else:
            tracker.log_artifact(run_id, local_path, artifact_path)

    def register_model(
        self, model: Any, name: str, input_example: Any = None, metrics: Mapping[str, float] | None = None
    ) -> "Registration | None":
        """Log a PyTorch model to this step's MLflow run (its signature inferred from
        ``input_example``) and register it as ``name``.

        ``metrics`` (e.g. the test accuracy) are recorded on the new version as ``rto.*`` tags;
        with ``mlflow.champion`` configured, its alias moves to this version when it beats the
        version holding it on that metric. None when the step has no MLflow run.
        """
        found = self._tracker(for_what="register a model")
        if found is None:
            return None
        tracker, run_id = found
        version = tracker.log_pytorch_model(
            run_id,
            model,
            registered_name=name,
            input_example=input_example,
            sources=self.upstream_train_runs,  # MLflow shows the model among the train run's models too
        )
        if version is None:
            return None
        alias = None
        if self.champion is not None:
            from raytrain_orch.tracking.champion import ChampionRule

            rule = ChampionRule(*self.champion)
            alias = rule.alias if tracker.promote(name, version, dict(metrics or {}), rule) else None
        elif metrics:
            tracker.promote_tags(name, version, metrics)
        self.emit(Event.MODEL_REGISTERED, name=name, version=version, alias=alias)
        return Registration(name, version, alias)

    def emit(self, event: str, **fields: Any) -> None:
        """Send a progress event to the driver (never blocks; dropped if the driver is gone)."""
        if self.events is None:
            return
        where = {"step": self.step, "attempt": self.attempt, **({"trial": self.trial} if self.trial else {})}
        record = make(Event(event), **{"ts": time.time(), **where, **fields})  # a wrong field is our bug: raised
        try:
            self.events.put_nowait(record)
        except Exception:  # noqa: BLE001 — progress is best effort and must never fail a step
            pass

    def _tracker(self, for_what: str = "log") -> tuple[Any, str] | None:
        """This process's handle on the step's MLflow store and the attempt's run id; None where
        the step has no MLflow run (a context without tracking). A step run by the driver whose run
        MLflow did not create in time (an outage) has none either: that is an infrastructure fault,
        retried like one."""
        from raytrain_orch.tracking.tracker import tracker

        if self.found.id is None:
            self.found.id = self.mlflow_run_id or self._look_up_run()
        if self.found.id is None:
            if self.events is not None:  # run by the driver, which opens a run for every attempt
                from raytrain_orch.core.errors import TrackingUnavailableError

                raise TrackingUnavailableError(
                    f"step {self.step} cannot {for_what}: MLflow at {self.tracking_uri} did not create its run "
                    "(unreachable), so it has no MLflow run; the step is retried (retries.max in its config)"
                )
            return None
        return tracker(self.tracking_uri), self.found.id

    def _look_up_run(self) -> str | None:
        """The attempt's run, created by the driver's MLflow writer meanwhile: waited for up to
        ``TRACKING_START_WAIT_S``."""
        if self.events is None or self.mlflow_experiment is None:
            return None
        from raytrain_orch.core.constants import TRACKING_START_WAIT_S
        from raytrain_orch.tracking.tracker import tracker

        where = (self.mlflow_experiment, self.run_id, self.step, self.attempt)
        return tracker(self.tracking_uri).wait_for_step_run(*where, timeout_s=TRACKING_START_WAIT_S)
