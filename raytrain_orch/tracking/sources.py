"""Where an MLflow run's inputs come from: a step artifact's tables and datasets as MLflow
datasets, and the pipeline's source file (``mlflow.source.name``)."""

from __future__ import annotations

from raytrain_orch.store.artifacts import Artifact


def datasets_of(artifact: Artifact, context: str) -> list[dict[str, str]]:
    """A step artifact's tables and streamed datasets as MLflow datasets: named ``STEP.TABLE``,
    its storage URI, and the step's cache key as the digest (it changes when the data can)."""
    digest = artifact.path[-1][:36] if artifact.path else ""
    found = [(name, artifact.storage.uri(*artifact.path, f"{name}.parquet")) for name in artifact.tables]
    found += [(name, artifact.dataset_uri(name)) for name in artifact.datasets]
    return [
        {"name": f"{artifact.step}.{name}", "digest": digest, "uri": uri, "context": context} for name, uri in found
    ]


def source_file(spec: str) -> str:
    """The file of the pipeline's module (``jobs/digits.py``), relative to here when it is below."""
    import importlib.util
    import os

    module = spec.partition(":")[0]
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.origin:
        return module
    relative = os.path.relpath(found.origin)
    return found.origin if relative.startswith("..") else relative
