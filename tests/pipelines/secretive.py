"""A one-step pipeline whose params hold a secret, for redaction tests; it also reports the
length of ``SOURCE_API_TOKEN`` from its environment (a secret passed to a job with ``--env``)."""

from __future__ import annotations

import logging
import os

from pydantic import Field

from raytrain_orch import Params, Pipeline, StepContext

pipeline = Pipeline("secretive")


class FetchParams(Params):
    api_token: str = Field(..., description="The data source's API token: a secret.")
    rows: int = Field(10, ge=1, description="Rows to fetch.")


@pipeline.task(params=FetchParams)
def fetch(ctx: StepContext, params: FetchParams) -> dict[str, float]:
    print(
        f"fetching {params.rows} rows with token {params.api_token}"
    )  # careless, as step code can be: the log masks it
    logging.getLogger("secretive").warning("source token from the environment: %s", os.environ.get("SOURCE_API_TOKEN"))
    env_token = os.environ.get("SOURCE_API_TOKEN", "")
    return {
        "rows": float(params.rows),
        "token_length": float(len(params.api_token)),
        "env_token_length": float(len(env_token)),
    }
