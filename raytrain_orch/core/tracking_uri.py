"""The MLflow tracking URI as every process of a run must read it: a relative sqlite file made
absolute where the driver resolves its config, so the driver and its workers open the same file.
"""

from __future__ import annotations

from pathlib import Path

from raytrain_orch.core.errors import ConfigError


def resolve_tracking_uri(uri: str, base_dir: str | Path | None = None) -> str:
    """Make a relative ``sqlite:///file.db`` absolute, so every process opens the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = Path(base_dir or Path.cwd()) / uri[len(prefix) :]
        return prefix + str(path.resolve())
    if "://" not in uri:
        raise ConfigError(f"mlflow.tracking_uri {uri!r} is not a URI; use sqlite:///mlflow.db or http://HOST:5000")
    return uri
