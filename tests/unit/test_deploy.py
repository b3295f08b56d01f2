"""deploy/rayjob.yaml is a RayJob KubeRay accepts, and it runs the digits pipeline the way a
retried Kubernetes job must: same run id, resumed, shared storage and MLflow, no secrets inline.

The schema is KubeRay's own (tests/data/kuberay_rayjob_v1_schema.yaml, vendored from the CRD;
its header names the source), made strict so that a misspelt key fails here rather than being
dropped by the API server.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from raytrain_orch.cli.main import build_parser
from raytrain_orch.core.config import load_config
from raytrain_orch.core.redact import is_secret
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "data" / "kuberay_rayjob_v1_schema.yaml"

INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
FORMATS = jsonschema.FormatChecker()
for _name, (_lo, _hi) in INT_RANGES.items():
    FORMATS.checks(_name)(lambda v, lo=_lo, hi=_hi: not isinstance(v, int) or lo <= v <= hi)


def strict(schema):
    """``schema`` with ``additionalProperties: false`` wherever it lists properties (and says
    nothing of others): an unknown key at a vendored level is an error."""
    schema = copy.deepcopy(schema)
    seen: set[int] = set()

    def walk(node) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict) and id(node) not in seen:
            seen.add(id(node))
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)

    walk(schema)
    return schema


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft4Validator:
    vendored = yaml.safe_load(SCHEMA_FILE.read_text())["openAPIV3Schema"]
    schema = strict(vendored)
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema, format_checker=FORMATS)


@pytest.fixture(scope="module")
def job() -> dict:
    return yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())


@pytest.fixture(scope="module")
def cluster(job) -> dict:
    return job["spec"]["rayClusterSpec"]


@pytest.fixture(scope="module")
def groups(cluster) -> dict[str, dict]:
    return {g["groupName"]: g for g in cluster["workerGroupSpecs"]}


def pod_specs(job: dict) -> dict[str, dict]:
    cluster = job["spec"]["rayClusterSpec"]
    specs = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    specs.update({g["groupName"]: g["template"]["spec"] for g in cluster["workerGroupSpecs"]})
    return specs


def containers(job: dict) -> list[dict]:
    return [c for spec in pod_specs(job).values() for c in spec.get("containers", []) + spec.get("initContainers", [])]


def entrypoint_args(job: dict) -> list[str]:
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "raytrain_orch"], argv
    return argv[3:]


def errors(validator, document) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


# --- KubeRay's schema ------------------------------------------------------------------------


def test_the_vendored_schema_names_its_source():
    header = SCHEMA_FILE.read_text().split("\nfragments:", 1)[0]
    assert "ray-project/kuberay" in header and "ray.io_rayjobs.yaml" in header
    assert re.search(r"commit: [0-9a-f]{40}\b", header)
    assert SCHEMA_FILE.stat().st_size < 300_000


def test_the_manifest_is_a_ray_io_v1_rayjob_valid_against_kuberays_schema(job, validator):
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])  # a DNS-1123 name
    assert errors(validator, job) == []


@pytest.mark.parametrize(
    "path, key",
    [
        (("spec",), "backofLimit"),  # backoffLimit
        (("spec",), "ttlSecondAfterFinished"),  # ttlSecondsAfterFinished
        (("spec", "rayClusterSpec"), "enableInTreeAutoScaling"),  # enableInTreeAutoscaling
        (("spec", "rayClusterSpec", "headGroupSpec"), "rayStartParam"),  # rayStartParams
        (("spec", "rayClusterSpec", "workerGroupSpecs", 0), "minReplica"),  # minReplicas
        (("spec", "rayClusterSpec", "workerGroupSpecs", 1, "template", "spec"), "toleration"),
        (("spec", "rayClusterSpec", "headGroupSpec", "template", "spec", "containers", 0), "resource"),
    ],
)
def test_a_misspelt_key_is_rejected(job, validator, path, key):
    broken = copy.deepcopy(job)
    node = broken
    for part in path:
        node = node[part]
    node[key] = copy.deepcopy(next(iter(node.values())))

    found = errors(validator, broken)

    assert found and any(key in e and "Additional properties" in e for e in found), found


def test_wrong_types_are_rejected(job, validator):
    broken = copy.deepcopy(job)
    broken["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be the string "0"
    broken["spec"]["backoffLimit"] = "2"
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "memory"
    ] = "4 GB"
    del broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]

    found = "\n".join(errors(validator, broken))

    assert "rayStartParams/num-cpus: 0 is not of type 'string'" in found
    assert "spec/backoffLimit: '2' is not of type 'integer'" in found
    assert "limits/memory: '4 GB' does not match" in found
    assert "'groupName' is a required property" in found


# --- what the job runs -----------------------------------------------------------------------


def test_the_entrypoint_runs_the_digits_pipeline_with_a_fixed_run_id_and_resume(job):
    args = build_parser().parse_args(entrypoint_args(job))

    assert args.command == "run"
    assert args.run_id and args.resume  # a retried job continues the same run
    assert args.run_id == job["metadata"]["name"]  # one run per RayJob
    assert args.config == "configs/digits.yaml" and (REPO / args.config).is_file()


def test_the_entrypoint_points_storage_and_mlflow_at_shared_services(job):
    args = build_parser().parse_args(entrypoint_args(job))

    config = load_config(REPO / args.config, args.set)  # the overrides name real config keys

    assert config.storage.startswith("s3://")  # every pod, and every retry's new cluster, sees it
    assert config.mlflow.tracking_uri.startswith("http://")  # a server, not a pod-local sqlite file
    assert config.ray.address is None  # inside `ray job submit` Ray joins the job's own cluster


def test_retries_and_lifecycle(job):
    spec = job["spec"]
    assert spec["backoffLimit"] >= 1
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
    assert "runtimeEnvYAML" not in spec  # the image holds the code: no working_dir upload


# --- the Ray cluster ---------------------------------------------------------------------------


def test_the_head_takes_no_cpus_and_serves_dashboard_gcs_and_client(cluster):
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    (container,) = head["template"]["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "gcs": 6379,
        "dashboard": 8265,
        "client": 10001,
    }
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_autoscaled_cpu_and_gpu_worker_groups(cluster, groups):
    assert cluster["enableInTreeAutoscaling"] is True
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        for container in group["template"]["spec"]["containers"]:
            assert container["resources"]["requests"] and container["resources"]["limits"]
    assert groups["cpu"]["minReplicas"] >= 1  # the digits steps need CPU workers
    assert groups["gpu"]["minReplicas"] == 0  # no GPU node is paid for until a step asks


def test_the_gpu_group_requests_gpus_and_tolerates_the_gpu_taint(groups):
    spec = groups["gpu"]["template"]["spec"]
    for container in spec["containers"]:
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    for name, group in groups.items():
        if name != "gpu":
            assert not any(
                "nvidia.com/gpu" in c["resources"].get("limits", {}) for c in group["template"]["spec"]["containers"]
            )


def test_every_container_runs_the_same_image_of_the_same_ray_version(job, cluster):
    images = {c["image"] for c in containers(job)}
    assert len(images) == 1, images
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", dockerfile, re.M).group(1)
    assert base.startswith(f"rayproject/ray:{cluster['rayVersion']}-")


def test_the_image_holds_the_project_where_the_entrypoint_runs(job):
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    workdir = re.findall(r"^WORKDIR\s+(\S+)", dockerfile, re.M)[-1]
    assert workdir == "/home/ray/raytrain_orch"
    for needed in ("raytrain_orch/", "jobs/", "configs/"):  # the package, the pipeline module, the config
        assert re.search(rf"^COPY .*\b{needed} {needed}$", dockerfile, re.M), needed
    assert re.search(r"pip install .* \. boto3", dockerfile)


# --- secrets -------------------------------------------------------------------------------------


def looks_secret(name: str) -> bool:
    return is_secret(name) or "ACCESS_KEY" in name.upper()


def test_no_secret_is_written_in_the_manifest(job):
    envs = [e for c in containers(job) for e in c.get("env", [])]
    envs += job["spec"]["rayClusterSpec"].get("autoscalerOptions", {}).get("env", [])
    secret_envs = [e for e in envs if looks_secret(e["name"])]

    assert secret_envs, "the bucket's credentials must reach the pods"
    for env in secret_envs:
        assert "value" not in env, f"{env['name']} has a literal value"
        assert env["valueFrom"]["secretKeyRef"]["name"] == "rto-storage"
    for container in containers(job):
        names = {e["name"] for e in container.get("env", [])}
        from_secret = any("secretRef" in s for s in container.get("envFrom", []))
        assert from_secret or {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= names, container["name"]


def test_the_secret_check_catches_a_literal_credential(job):
    broken = copy.deepcopy(job)
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "hunter2"}
    ]
    with pytest.raises(AssertionError, match="literal value"):
        test_no_secret_is_written_in_the_manifest(broken)
