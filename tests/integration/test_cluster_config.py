"""cluster.yaml is a real Ray cluster-launcher config: it passes Ray's own schema."""

from __future__ import annotations

import copy

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.conftest import REPO


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_launcher_schema(cluster):
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_schema_check_rejects_a_misspelt_key(cluster):
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_config(prepare_config(broken))


def test_cluster_has_cpu_and_gpu_worker_types_that_install_the_project(cluster):
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] == "head"
    assert types["cpu_worker"]["max_workers"] >= 1 and types["gpu_worker"]["max_workers"] >= 1
    assert types["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p"))  # GPU instance family
    assert any("pip install -e /home/ubuntu/raytrain_orch" in c for c in cluster["setup_commands"])
    assert any("mlflow server" in c for c in cluster["head_setup_commands"])
