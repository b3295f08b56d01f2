"""The config's JSON Schema, for editors (``rto schema``): the pydantic models' own schema, with
each step's ``params`` replaced by the schema of the ``Params`` its pipeline declares.

Pure: the pipeline is passed in, already imported.
"""

from __future__ import annotations

from typing import Any

from raytrain_orch.core.config import PipelineConfig
from raytrain_orch.core.pipeline import Pipeline

#: Where a config says which schema checks it (the YAML language server's modeline).
MODELINE = "# yaml-language-server: $schema="


def config_schema(pipeline: Pipeline | None = None) -> dict[str, Any]:
    """The JSON Schema of a config; with ``pipeline``, ``steps`` names its steps, each with its
    ``params`` model (a key of no step, or an unknown param, is then an error in the editor)."""
    schema = PipelineConfig.model_json_schema(ref_template="#/$defs/{model}")
    schema["title"] = "raytrain_orch pipeline config" + (f" ({pipeline.name})" if pipeline else "")
    if pipeline is None:
        return schema
    defs = schema.setdefault("$defs", {})
    steps: dict[str, Any] = {}
    for name, step in pipeline.steps.items():
        entry: dict[str, Any] = {"allOf": [{"$ref": "#/$defs/StepConfig"}]}
        if step.params_model is not None:
            params = step.params_model.model_json_schema(ref_template="#/$defs/{model}")
            defs.update(params.pop("$defs", {}))
            params["additionalProperties"] = False  # a typo in a param is an error, as when it runs
            entry["properties"] = {"params": params}
        steps[name] = entry
    schema["properties"]["steps"] = {
        "type": "object",
        "description": f"Per-step settings of pipeline {pipeline.name!r}, by step name.",
        "properties": steps,
        "additionalProperties": False,
    }
    return schema
