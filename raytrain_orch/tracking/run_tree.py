"""The MLflow runs of one pipeline run, as the driver builds them: the pipeline run; a child
per step attempt; under a swept step's run, a child per trial.

``RunTree`` turns what the runner knows (a step started, an attempt succeeded) and what the
workers report (epochs, trials) into tracking operations on the ``Outbox``, which stores them
off the run's path. It holds each MLflow run as a ``Ref`` until MLflow has created it, and
copies the ids into the run record as they arrive (``sync``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from raytrain_orch.core import constants
from raytrain_orch.core.config import PipelineConfig
from raytrain_orch.core.events import Consumer
from raytrain_orch.core.plan import Plan, StepPlan
from raytrain_orch.core.redact import redact
from raytrain_orch.core.report import Report
from raytrain_orch.core.report import build as build_report
from raytrain_orch.core.sentences import preempter
from raytrain_orch.store.artifacts import Artifact
from raytrain_orch.store.checkpoint import MANIFEST as CHECKPOINT_MANIFEST
from raytrain_orch.store.state import RunState, RunStore, Status, ray_job_id
from raytrain_orch.store.storage import Storage
from raytrain_orch.tracking import report_files
from raytrain_orch.tracking.charts import epoch_series, learning_curves
from raytrain_orch.tracking.ops import Ref
from raytrain_orch.tracking.outbox import Outbox
from raytrain_orch.tracking.sources import datasets_of, source_file
from raytrain_orch.tracking.tracker import FAILED, FINISHED, KILLED, Tracker, git_commit

_Trial = tuple[str, int, str]  # (step, attempt, trial)
Record = Mapping[str, Any]

#: A pipeline run's or step attempt's end, as MLflow says it.
_MLFLOW_STATUS = MappingProxyType({Status.SUCCEEDED: FINISHED, Status.CACHED: FINISHED, Status.KILLED: KILLED})


class RunTree(Consumer):
    """The runner's tracking sink (``runner.TrackingSink``) for MLflow."""

    def __init__(self, tracking: Outbox, config: PipelineConfig, plan: Plan, pipeline: str, store: RunStore):
        self.tracking, self.config, self.plan, self.store = tracking, config, plan, store
        commit, job = git_commit(), ray_job_id()
        self._common = {"rto.pipeline": pipeline, "rto.config_hash": plan.config_hash}
        if commit:
            self._common.update({"rto.git_commit": commit, "mlflow.source.git.commit": commit})
        if job:
            self._common["rto.ray_job_id"] = job
        # The runs table's Source column: the pipeline's module, run as a Ray job or from here.
        self._common["mlflow.source.name"] = source_file(config.pipeline)
        self._common["mlflow.source.type"] = "JOB" if job else "LOCAL"
        self._experiment: Ref | None = None
        self._parent: Ref | None = None
        self._steps: dict[tuple[str, int], Ref] = {}
        self._trials: dict[_Trial, Ref] = {}
        self._open_trials: set[_Trial] = set()
        self._run_id = ""  # the pipeline run's, once begun or resumed
        self._state: RunState | None = None  # its record, as the runner keeps it

    def _began(self) -> Ref:
        """The experiment, once ``begin`` or ``resume`` named it."""
        assert self._experiment is not None, "RunTree.begin() or resume() comes first"
        return self._experiment

    def _pipeline_run(self) -> Ref:
        assert self._parent is not None, "RunTree.begin() or resume() comes first"
        return self._parent

    def tags(self, run_id: str, **more: str) -> dict[str, str]:
        """What every MLflow run of pipeline run ``run_id`` is tagged with, and ``rto.*`` more."""
        return {"rto.run_id": run_id, **self._common, **{f"rto.{k}": v for k, v in more.items()}}

    # --- the pipeline run -------------------------------------------------------------------
    def begin(self, state: RunState) -> None:
        tracking, self._run_id, self._state = self.tracking, state.run_id, state
        self._experiment = tracking.experiment(self.config.experiment)
        self._parent = tracking.start_run(self._experiment, state.run_id, self.tags(state.run_id, kind="pipeline"))
        shown = redact(self.config.model_dump(mode="json"))  # the run directory keeps the real values, for resume
        tracking.log_params(self._parent, shown)
        tracking.log_text(self._parent, yaml.safe_dump(shown, sort_keys=False), "config.yaml")
        tracking.log_text(self._parent, json.dumps(self.plan.to_dict(), indent=2), "plan.json")
        # Not waited for: created while the first steps run, its ids reach the record through ``sync``.
        state.mlflow = {"tracking_uri": tracking.tracking_uri, "experiment_id": None, "run_id": None}

    def resume(self, state: RunState) -> None:
        """Go on with the pipeline run of an earlier driver: what it left open (step attempts,
        trials) ends KILLED, and the pipeline run is RUNNING again. A trial run it opened but died
        before describing gets its params from the run's events."""
        tracking, known, self._run_id, self._state = self.tracking, state.mlflow, state.run_id, state
        trial_params = _TrialParams()
        for record in self.store.events(state.run_id):
            trial_params.consume(record)
        tracking.call(
            lambda store: store.end_open_runs(
                known.get("experiment_id"), state.run_id, KILLED, keep=known.get("run_id"), params=trial_params.params
            )
        )
        self._experiment = (
            Ref(self.config.experiment, known["experiment_id"])
            if known.get("experiment_id")
            else tracking.experiment(self.config.experiment)
        )
        if known.get("run_id"):
            self._parent = Ref(state.run_id, known["run_id"])
            tracking.reopen_run(self._parent)
        else:  # MLflow was out for the whole of the earlier driver's life
            self._parent = tracking.start_run(self._experiment, state.run_id, self.tags(state.run_id, kind="pipeline"))
            self._parent.wait(constants.TRACKING_START_WAIT_S)
            self.sync(state)

    def sync(self, state: RunState) -> None:
        """Copy MLflow ids created since into the record."""
        if self._parent is not None and self._parent.id is not None and state.mlflow.get("run_id") is None:
            state.mlflow.update(experiment_id=self._experiment.id if self._experiment else None, run_id=self._parent.id)
        for name, s in state.steps.items():
            ref = self._steps.get((name, s.attempts))
            if ref is not None and ref.id is not None:
                s.mlflow_run_id = ref.id

    def keep_ids(self) -> None:
        """The runs' ids into the record, once the outbox stored what the run queued (its runs are
        created off the run's path, some after its end) and the runner is done with the record."""
        if self._state is not None:
            self.sync(self._state)
            self.store.save(self._state)

    def finish(self, state: RunState, status: Status) -> None:
        """End every run still open: trials KILLED (their step ended under them), then the pipeline
        run as the run ended (SUCCEEDED: FINISHED)."""
        for key in list(self._open_trials):
            self.tracking.end_run(self._trials[key], KILLED)
            self._open_trials.discard(key)
        if self._parent is not None:
            self.tracking.call(report_files.logger(lambda: self._report(state, status), self._parent))
            self.tracking.end_run(self._parent, _MLFLOW_STATUS.get(status, FAILED))

    def _report(self, state: RunState, status: Status) -> Report:
        """The run's report, from its events as recorded by now (``run_finished`` may still come)."""
        records = self.store.events(state.run_id)
        return build_report(records, self.plan.to_dict(), self.config.cost, state.ended_at, status.value.lower())

    # --- step attempts ----------------------------------------------------------------------
    def start_step(self, state: RunState, step: StepPlan, attempt: int) -> None:
        """A step attempt's run, created off the step's path: the step looks it up when it logs a
        file or a model (``StepContext``), and ``sync`` copies its id into the record."""
        self._open_step(state, step, attempt)

    def _open_step(self, state: RunState, step: StepPlan, attempt: int, cached: bool = False) -> Ref:
        tags = self.tags(
            state.run_id,
            step=step.name,
            attempt=str(attempt),
            kind=step.kind,
            cache_key=step.cache_key,
            cached=str(cached).lower(),
        )
        unit = state.steps[step.name]
        parent = self._steps.get((unit.parent, state.steps[unit.parent].attempts)) if unit.parent else None
        name = f"{step.name}: {_item_text(unit.item)}" if unit.parent else step.name  # an item: STEP[i]: ITEM
        run = self._steps[(step.name, attempt)] = self.tracking.start_run(
            self._began(), name, tags, parent=parent or self._parent
        )
        if step.params is not None:
            self.tracking.log_params(run, redact(step.params.model_dump(mode="json")))
        stored = [state.steps[dep].artifact for dep in step.inputs]
        inputs = [datasets_of(Artifact.from_dict(artifact), "input") for artifact in stored if artifact]
        self._log_datasets(run, [dataset for found in inputs for dataset in found])
        return run

    def _log_datasets(self, run: Ref, datasets: list[dict[str, str]]) -> None:
        if datasets:

            def log(store: Tracker, ref: Ref = run) -> None:
                assert ref.id is not None  # its start_run came first in the outbox
                store.log_datasets(ref.id, datasets)

            self.tracking.call(log)

    def reused(self, state: RunState, step: StepPlan, attempt: int, metrics: dict[str, float]) -> None:
        """A cache hit: a FINISHED run tagged ``rto.cached=true`` with the stored metrics."""
        run = self._open_step(state, step, attempt, cached=True)
        self.tracking.log_metrics(run, metrics)
        self.tracking.log_metrics(self._pipeline_run(), metrics)
        self.tracking.end_run(run, FINISHED)

    def succeeded(self, state: RunState, step: StepPlan, attempt: int, artifact: Artifact) -> None:
        run = self._steps[(step.name, attempt)]
        self._log_outputs(state, step, run, artifact)
        self._log_datasets(run, datasets_of(artifact, "output"))
        self.tracking.log_metrics(self._pipeline_run(), artifact.metrics)
        self.tracking.end_run(run, FINISHED)

    def ended(self, step: str, attempt: int, status: Status, error: str | None = None) -> None:
        """A step attempt ended FAILED (with its error) or KILLED."""
        run = self._steps.get((step, attempt))
        if run is None:
            return
        if error:
            self.tracking.set_tags(run, {"rto.error": error[:5000]})
        self.tracking.end_run(run, _MLFLOW_STATUS.get(status, FAILED))

    def _log_outputs(self, state: RunState, step: StepPlan, run: Ref, artifact: Artifact) -> None:
        """What a finished attempt leaves in its run: a task's metrics and files; a train step's
        learning curves and chosen checkpoint's manifest; a sweep's curves, one line per trial."""
        tracking = self.tracking
        if step.kind != "train" or step.sweep is not None:
            tracking.log_metrics(run, artifact.metrics)  # a train step's are its epochs', already there
        if artifact.files:
            remote = artifact.storage.local_path() is None  # then downloaded for MLflow, and removed after
            tracking.log_files(run, artifact.files_dir, cleanup=remote)
        if step.kind != "train":
            return
        run_id, store = state.run_id, self.store

        def curves() -> Path | None:  # on the outbox's thread: drawing costs the run nothing
            swept = step.sweep is not None
            series = epoch_series(store.events(run_id), step.name, by_trial=swept)
            title = f"{step.name}: " + (f"{len(series)} trials" if swept else "learning curves")
            chart = learning_curves(series, Path(tempfile.mkdtemp(prefix="rto-curves-")) / "learning_curves.png", title)
            return chart.parent if chart else None

        tracking.log_files(run, curves, cleanup=True)
        if artifact.checkpoint:
            manifest = Storage(artifact.checkpoint).read_bytes(CHECKPOINT_MANIFEST).decode()
            tracking.log_text(run, manifest, f"checkpoint/{CHECKPOINT_MANIFEST}")

    # --- what workers report: a hook per event (``core.events.Consumer``) ---------------------
    def on_trial_started(self, r: Record) -> None:
        step, attempt, trial = r["step"], r.get("attempt", 0), r.get("trial")
        step_run = self._steps.get((step, attempt))
        if step_run is None or not trial:
            return
        tags = self.tags(self._run_id, step=step, attempt=str(attempt), kind="trial", trial=trial)
        params = redact(r.get("params") or {})
        self._trials[(step, attempt, trial)] = self.tracking.start_run(
            self._began(), trial, tags, parent=step_run, params=params
        )
        self._open_trials.add((step, attempt, trial))

    def on_epoch(self, r: Record) -> None:
        self._log_metrics(r, r.get("epoch"))

    def on_metrics(self, r: Record) -> None:
        self._log_metrics(r, r.get("index"))

    def _log_metrics(self, r: Record, index: int | None) -> None:
        run = self._run_of(r)
        if run is not None:
            metrics = {**(r.get("metrics") or {}), **(r.get("perf") or {})}
            self.tracking.log_metrics(run, metrics, step=index, ts=r.get("ts"))

    def on_step_preempting(self, r: Record) -> None:
        if (run := self._run_of(r)) is not None:
            self.tracking.set_tags(run, {"rto.preempted_by": preempter(r), "rto.preempted_keep": str(r.get("keep", 0))})

    def on_step_admitted(self, r: Record) -> None:
        if (run := self._run_of(r)) is not None and r.get("displaced"):
            self.tracking.set_tags(run, {"rto.displaced": ", ".join(r["displaced"])})

    def on_workers_resized(self, r: Record) -> None:
        run = self._run_of(r)
        if run is not None:  # now; per epoch, the metric world_size
            self.tracking.set_tags(run, {"rto.world_size": str(r.get("world_size"))})

    def on_trial_finished(self, r: Record) -> None:
        self._trial_ended(r, "finished")

    def on_trial_stopped(self, r: Record) -> None:
        self._trial_ended(r, "stopped")

    def on_trial_failed(self, r: Record) -> None:
        self._trial_ended(r, "failed")

    def _trial_ended(self, r: Record, how: str) -> None:
        if r.get("trial") and self._run_of(r) is not None:
            key = (r["step"], r.get("attempt", 0), r["trial"])
            self._end_trial(key, how, epochs=r.get("epochs"), error=r.get("error"))

    def _run_of(self, r: Record) -> Ref | None:
        """The MLflow run a worker's event belongs to: its trial's, else its step attempt's."""
        step, attempt, trial = r.get("step", ""), r.get("attempt", 0), r.get("trial")
        return self._trials.get((step, attempt, trial)) if trial else self._steps.get((step, attempt))

    def on_sweep_finished(self, r: Record) -> None:
        step, attempt = r["step"], r.get("attempt", 0)
        step_run = self._steps.get((step, attempt))
        if step_run is None:
            return
        for row in r.get("trials") or []:
            key = (step, attempt, row["trial"])
            self._end_trial(key, row["status"], epochs=row.get("epochs"), error=row.get("error"))
            if row.get("best"):
                self._tag_best(step_run, key, row)

    def _tag_best(self, step_run: Ref, key: _Trial, row: Mapping[str, Any]) -> None:
        self.tracking.set_tags(
            step_run,
            {"rto.best_trial": row["trial"], "rto.best_params": json.dumps(row.get("params"), sort_keys=True)},
        )
        if key in self._trials:
            self.tracking.set_tags(self._trials[key], {"rto.best": "true"})
            return
        # It finished under an earlier driver of this run: find its run by its tags.
        experiment, where = (
            self._experiment,
            f"tags.`rto.run_id` = '{self._run_id}' AND tags.`rto.trial` = '{row['trial']}' AND "
            "attributes.status = 'FINISHED'",
        )

        def tag_best(store: Tracker, where: str = where, experiment: Ref | None = experiment) -> None:
            store.tag_newest(experiment.id if experiment else None, where, {"rto.best": "true"})

        self.tracking.call(tag_best)

    def _end_trial(self, key: _Trial, how: str, epochs: int | None = None, error: str | None = None) -> None:
        """FINISHED when the trial ran to the end or a scheduler stopped it early (tagged so),
        FAILED when it failed. A stop outranks the failure it may cause on the trial's way out."""
        run = self._trials.get(key)
        if run is None or (key not in self._open_trials and how != "stopped"):
            return
        if how == "stopped":
            self.tracking.set_tags(run, {"rto.stopped_early": "true", "rto.epochs": str(epochs)})
        elif how == "failed" and error:
            self.tracking.set_tags(run, {"rto.error": str(error)[:5000]})
        self.tracking.end_run(run, FAILED if how == "failed" else FINISHED)
        self._open_trials.discard(key)


class _TrialParams(Consumer):
    """Each trial's params, by (attempt, trial), from the run's events (shown redacted)."""

    def __init__(self) -> None:
        self.params: dict[tuple[str, str], dict[str, Any]] = {}

    def on_trial_started(self, r: Record) -> None:
        if r.get("trial"):
            self.params[(str(r.get("attempt")), str(r["trial"]))] = redact(r.get("params") or {})


def _item_text(item: Any) -> str:
    """An item as its MLflow run's name shows it: a string as it is, anything else as JSON."""
    return (item if isinstance(item, str) else json.dumps(item, sort_keys=True))[:200]
