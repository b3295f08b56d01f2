"""Reachability probes: before a run on a cluster starts, the node its driver runs on reaches
the storage root and the MLflow server, or one line says which one it does not reach and what
to change.
"""

from __future__ import annotations

import os
import urllib.request

from raytrain_orch.core import constants
from raytrain_orch.core.config import PipelineConfig
from raytrain_orch.core.errors import ClusterAccessError, ConfigError
from raytrain_orch.core.text import gist
from raytrain_orch.store.storage import Storage


def check_cluster_storage(config: PipelineConfig) -> None:
    """A run on a cluster needs a storage root every node reaches: a local path only as a shared mount."""
    if Storage(config.storage).local_path() is None or config.storage_options.shared_mount:
        return
    raise ConfigError(
        f"storage {config.storage} is a local path, which other nodes of the cluster never see; use object storage "
        "(--set storage=s3://BUCKET/rto-runs) or, if every node mounts it, say so "
        "(--set storage_options.shared_mount=true)"
    )


def check_cluster_reach(config: PipelineConfig) -> None:
    """On a cluster, where the driver runs (a submitted job's node): reach the storage root and
    an MLflow server before anything starts, and say in one line which one is out of reach."""
    check_storage_reach(config)
    check_mlflow_reach(config)


def check_storage_reach(config: PipelineConfig) -> None:
    """Write (and remove) a file under an object-store root, or say in one line that it cannot be.
    (A local path needs nothing written: on a cluster it must be a shared mount, which
    ``check_cluster_storage`` asks for, and a write here would leave its directories behind.)"""
    storage = Storage(config.storage)
    if storage.local_path() is not None:
        return
    probe = (constants.RUNS_DIR, f".probe-{os.getpid()}")
    try:
        storage.write_bytes(b"", *probe)
        storage.fs.delete_file(storage.path(*probe))
    except Exception as e:  # noqa: BLE001 — whatever the filesystem raises, the cause is the same
        raise ClusterAccessError(
            f"the storage root {config.storage} cannot be written from this node ({gist(e)}); use a bucket every "
            "node reaches, with its credentials on the nodes (docs/storage.md), or a mount they all share"
        ) from None


def check_mlflow_reach(config: PipelineConfig) -> None:
    """An MLflow server answers its health check, or one line says it does not."""
    uri = config.mlflow.tracking_uri
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10).close()
    except OSError as e:
        reason = getattr(e, "reason", None) or e  # urllib's URLError wraps the socket's error
        raise ClusterAccessError(
            f"the MLflow server {uri} cannot be reached from this node ({gist(reason)}); run one every node reaches "
            "and set mlflow.tracking_uri to its address (127.0.0.1 and localhost mean each node itself)"
        ) from None
