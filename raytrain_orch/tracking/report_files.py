"""The run report's files — ``report.json``, ``report.txt``, ``timeline.html`` and ``timeline.png`` —
written for ``rto report --open`` and logged to the MLflow pipeline run at the end of every run,
with the run's efficiency and cost as its metrics."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from raytrain_orch.core import report_text, timeline
from raytrain_orch.core.report import Report
from raytrain_orch.tracking.tracker import transient

log = logging.getLogger(__name__)

#: Where the files go in the pipeline run's artifacts (MLflow's viewer shows the HTML and PNG there).
ARTIFACT_DIR = "report"


def write(report: Report, directory: str | Path) -> Path:
    """The report's four files in ``directory``; the PNG is left out (with a warning) if drawing it fails."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = report.to_dict()
    (directory / "report.json").write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    (directory / "report.txt").write_text(report_text.render(data), encoding="utf-8")
    (directory / "timeline.html").write_text(timeline.render_html(data), encoding="utf-8")
    try:
        from raytrain_orch.tracking.timeline_png import render_png

        render_png(data, directory / "timeline.png")
    except Exception as error:  # noqa: BLE001 — the picture is a convenience; the HTML holds the same
        log.warning("timeline.png not drawn: %s: %s", type(error).__name__, error)
    return directory


def metrics(report: Report) -> dict[str, float]:
    """What the pipeline run records as metrics: the run's CPU (and GPU) efficiency, its cost."""
    found: dict[str, float] = {}
    for name, gauge in report.gauges().items():
        if gauge.efficiency is not None:
            found[f"{name.lower()}_efficiency"] = round(gauge.efficiency, 4)
    cost = report.cost()
    if cost is not None:
        found.update(cost_estimate=round(cost["cost_estimate"], 6), idle_cost=round(cost["idle_cost"], 6))
    return found


def logger(make_report: Callable[[], Report], run: Any) -> Callable[[Any], None]:
    """The outbox call that logs the report to ``run`` (a ``Ref``): built on the outbox's thread, so
    the run's end waits for none of it. The files are made once: while MLflow is down, the outbox
    retries the upload only, not the reading of the run's events and the drawing."""
    made: list[tuple[Path, Mapping[str, float]]] = []

    def log_report(store: Any) -> None:
        if not made:
            report = make_report()
            made.append((write(report, tempfile.mkdtemp(prefix="rto-report-")), metrics(report)))
        directory, found = made[0]
        try:
            store.log_artifacts(run.id, directory, ARTIFACT_DIR)
            if found:
                store.log_metrics(run.id, found)
        except Exception as error:
            if not transient(error):  # not retried: nothing will upload them
                shutil.rmtree(directory, ignore_errors=True)
            raise
        shutil.rmtree(directory, ignore_errors=True)

    return log_report
