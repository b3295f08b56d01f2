from pathlib import Path

from raytrain_orch import Artifact, Pipeline, StepContext

pipeline = Pipeline("edited")


@pipeline.task
def source(ctx: StepContext) -> dict[str, float]:
    # A relative path means what it meant where the run was started (the repository here).
    return {"value": 2.0, "in_driver_dir": float(Path("tests/pipelines").is_dir())}


@pipeline.task
def double(ctx: StepContext, source: Artifact) -> dict[str, float]:
    return {"value": source.metrics["value"] * 2}
