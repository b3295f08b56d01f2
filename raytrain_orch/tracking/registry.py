"""Which runs a registered MLflow model version comes from: ``rto gc`` never collects those.

A version comes from a run when the MLflow run it was logged in is one of the run's (the
pipeline's run, a step's, a trial's: every MLflow run of a pipeline run is tagged
``rto.run_id``), or when its source lies in the run's directory under the storage root.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from raytrain_orch.core.errors import TrackingUnavailableError
from raytrain_orch.core.text import gist
from raytrain_orch.store.state import RunState

#: How long ``rto gc`` waits for an MLflow server to answer before it keeps the runs it cannot check.
HEALTH_TIMEOUT_S = 10.0


def registered(tracking_uri: str, runs: Sequence[RunState], run_uris: dict[str, str]) -> dict[str, str]:
    """Each of ``runs`` (all tracked at ``tracking_uri``) that a registered model version comes
    from, with the version in words. ``run_uris``: each run's directory as a URI. A store that
    does not answer raises ``TrackingUnavailableError``."""
    from raytrain_orch.tracking.tracker import tracker

    _reachable(tracking_uri)
    # One quick try per request: a store that does not answer keeps the runs, it is not waited for.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    client = tracker(tracking_uri).client
    owners = {mlflow_id: r.run_id for r in runs for mlflow_id in _mlflow_runs(r)}
    found: dict[str, str] = {}
    try:
        for version in _versions(client):
            owner = _owner(client, version, owners, run_uris)
            if owner is not None:
                found.setdefault(owner, f"model {version.name} version {version.version} is registered")
    except Exception as e:  # noqa: BLE001 — whatever the store raises, its models cannot be checked
        raise TrackingUnavailableError(f"MLflow at {tracking_uri} did not answer ({gist(e)})") from None
    ours = {r.run_id for r in runs}
    return {run_id: why for run_id, why in found.items() if run_id in ours}


def _reachable(tracking_uri: str) -> None:
    """Fail fast where the store is plainly not there: a server that does not answer its health
    check, a SQLite file that does not exist (opening it would create an empty store)."""
    if tracking_uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S).close()
        except OSError as e:
            raise TrackingUnavailableError(
                f"MLflow at {tracking_uri} did not answer ({gist(getattr(e, 'reason', None) or e)})"
            ) from None
    elif tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///") :]).exists():
        raise TrackingUnavailableError(f"MLflow's store {tracking_uri} is not there")


def _mlflow_runs(run: RunState) -> set[str]:
    ids = {step.mlflow_run_id for step in run.steps.values()} | {run.mlflow.get("run_id")}
    return {i for i in ids if i}


def _versions(client: Any) -> Iterator[Any]:
    """Every model version of the registry, page by page."""
    token = None
    while True:
        page = client.search_model_versions(page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _owner(client: Any, version: Any, owners: dict[str, str], run_uris: dict[str, str]) -> str | None:
    """The run ``version`` comes from: by its MLflow run (``owners``: MLflow run id → run id, ""
    for none; filled in as runs are looked up) or by its source (``run_uris``)."""
    source = str(version.source or "")
    for run_id, uri in run_uris.items():
        if source == uri or source.startswith(uri.rstrip("/") + "/"):
            return run_id
    if not version.run_id:
        return None
    if version.run_id not in owners:
        # A run of the pipeline its record does not name (an earlier attempt's, a trial's): its tag says.
        owners[version.run_id] = _tagged(client, version.run_id) or ""
    return owners[version.run_id] or None


def _tagged(client: Any, mlflow_run_id: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(mlflow_run_id).data.tags.get("rto.run_id")
    except MlflowException:  # deleted, or of another store
        return None
