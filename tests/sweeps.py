"""What a finished sweep run left, read back the way the sweep tests check it (integration, e2e)."""

from __future__ import annotations

from typing import Any


def trial_table(sweep: dict[str, Any]) -> list[dict]:
    """The sweep's final trial table, from the run's last ``sweep_finished`` event."""
    return [e for e in sweep["events"] if e["event"] == "sweep_finished"][-1]["trials"]


def trial_runs(sweep: dict[str, Any]) -> list:
    """The MLflow runs of the run's trials."""
    state, client = sweep["state"], sweep["client"]
    return client.search_runs(
        [state.mlflow["experiment_id"]], f"tags.`rto.run_id` = '{state.run_id}' AND tags.`rto.kind` = 'trial'"
    )
