"""A small pipeline for the tests of ``rto gc`` and of the cache's check of its entries:
prepare (a table) → train (a loss; tests/fakes.py gives it a checkpoint) → evaluate (a table
of scores and ``test_accuracy``)."""

from __future__ import annotations

import pyarrow as pa
from pydantic import Field

from raytrain_orch import Artifact, Output, Params, Pipeline, StepContext

pipeline = Pipeline("retained")


class PrepareParams(Params):
    rows: int = Field(100, ge=1)


@pipeline.task(params=PrepareParams)
def prepare(ctx: StepContext, params: PrepareParams) -> pa.Table:
    return pa.table({"x": list(range(params.rows))})


@pipeline.task
def train(ctx: StepContext, prepare: Artifact) -> dict[str, float]:
    return {"loss": 1.0 / prepare.read_table().num_rows}


@pipeline.task
def evaluate(ctx: StepContext, prepare: Artifact, train: Artifact) -> Output:
    rows = prepare.read_table().num_rows
    scores = pa.table({"score": [train.metrics["loss"]] * rows})
    return Output(tables={"scores": scores}, metrics={"test_accuracy": 1.0 - train.metrics["loss"], "rows": rows})
