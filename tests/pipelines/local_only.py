"""A pipeline whose module imports a package only the submitting machine has (the test puts
``rto_local_only_dep`` on the client's PYTHONPATH): submitted, the cluster's Python lacks it."""

from __future__ import annotations

import rto_local_only_dep  # noqa: F401  — installed here, not on the cluster

from raytrain_orch import Pipeline

pipeline = Pipeline("local_only")


@pipeline.task
def hello(ctx) -> dict[str, float]:
    return {"value": 1.0}
