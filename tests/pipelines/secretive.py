"""A one-step pipeline whose params hold a secret, for redaction tests."""

from __future__ import annotations

from pydantic import Field

from raytrain_orch import Params, Pipeline, StepContext

pipeline = Pipeline("secretive")


class FetchParams(Params):
    api_token: str = Field(..., description="The data source's API token: a secret.")
    rows: int = Field(10, ge=1, description="Rows to fetch.")


@pipeline.task(params=FetchParams)
def fetch(ctx: StepContext, params: FetchParams) -> dict[str, float]:
    print(f"fetching {params.rows} rows")
    return {"rows": float(params.rows), "token_length": float(len(params.api_token))}
