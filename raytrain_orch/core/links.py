"""Where a user goes to see a run: its MLflow page and the ``rto status`` command that shows it.

Written once for every place that points at a run: ``rto status`` (its ``mlflow_url`` fields)
and the webhook messages of ``core.alerts``.
"""

from __future__ import annotations

import shlex

#: Where ``rto ui`` serves a local MLflow store unless told otherwise.
LOCAL_UI = "http://127.0.0.1:5000"


def mlflow_url(tracking_uri: str | None, experiment_id: str | None, run_id: str | None) -> str | None:
    """The MLflow UI page of a run: on the tracking server itself, or where ``rto ui`` serves a
    local store by default; None while any of the three is unknown."""
    if not (tracking_uri and experiment_id and run_id):
        return None
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def status_command(run_id: str, storage: str) -> str:
    """The command that shows the run from anywhere its storage is reachable (quoted for a shell)."""
    return f"rto status {shlex.quote(run_id)} --storage {shlex.quote(storage)}"
