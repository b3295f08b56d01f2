"""Strict pydantic models and their errors in one line: every config model forbids unknown keys
and is frozen; a failed validation names the key path and suggests the nearest valid name.

Pure: no Ray, no MLflow. Used by the config file's models and by each step's params model
(``pipeline.Step.bind_params``), so both word their errors alike.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, ValidationError

from raytrain_orch.core.errors import ConfigError


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


M = typing.TypeVar("M", bound=BaseModel)


def validate(model: type[M], raw: Any, *, source: str = "config", prefix: tuple[str | int, ...] = ()) -> M:
    """Validate ``raw`` against ``model``; on failure raise a one-line ``ConfigError``."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_validation_error(e, model, prefix)}") from None


def format_validation_error(error: ValidationError, model: type[BaseModel], prefix: tuple[str | int, ...] = ()) -> str:
    messages = []
    for err in error.errors():
        loc = tuple(err["loc"])
        path = ".".join(str(p) for p in (*prefix, *loc)) or "(top level)"
        if err["type"] == "extra_forbidden":
            known = _field_names_at(model, loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
            suggestion = f"did you mean {'.'.join(str(p) for p in (*prefix, *loc[:-1], hint[0]))!r}? " if hint else ""
            messages.append(f"unknown key {path!r}; {suggestion}valid keys here: {', '.join(sorted(known))}")
        elif err["type"] == "missing":
            messages.append(f"missing required key {path!r}")
        else:
            given = err.get("input")
            shown = "" if isinstance(given, (dict, list)) else f" (got {given!r})"
            messages.append(f"{path}: {err['msg'].removeprefix('Value error, ')}{shown}")
    return "; ".join(messages)


def _field_names_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """The valid keys of the mapping at ``loc`` inside ``model`` (for did-you-mean hints)."""
    annotation: Any = model
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return []
            annotation = field.annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """``X | None`` → ``X``."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation
