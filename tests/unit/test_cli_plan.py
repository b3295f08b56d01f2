"""``rto plan``, and ``rto run`` of a gang no local Ray could hold, in this process: neither
starts a Ray (``ray.init`` fails if called), so they need no cluster and answer at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from raytrain_orch.cli.main import main
from raytrain_orch.core.errors import EXIT_INFEASIBLE, EXIT_OK

from .conftest import REPO

GPU_GANG = "step train needs 2 × {CPU: 1, GPU: 1} STRICT_PACK"


@pytest.fixture
def no_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``RTO_HOME`` and a ``ray.init`` that fails the test: what the command leaves in
    the home tells whether it started the shared runtime; the ``ray.init`` whether it joined any Ray."""

    def refuse(*args, **kwargs):
        raise AssertionError("started or joined a Ray")

    home = tmp_path / "home"
    monkeypatch.setenv("RTO_HOME", str(home))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.chdir(REPO)
    return home


def _sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def _no_runtime_started(home: Path) -> bool:
    return not (home / "runtime" / "runtime.json").exists()


def test_plan_reports_the_gpu_config_infeasible_on_a_cpu_machine(no_ray, isolated, capsys):
    code = main(["plan", "configs/digits_gpu.yaml", *_sets(isolated)])

    out, err = capsys.readouterr()
    assert code == EXIT_INFEASIBLE, out + err
    assert GPU_GANG in err and "no GPU" in err
    assert "local Ray: none up" in out and _no_runtime_started(no_ray)  # judged without a Ray


def test_plan_prints_the_dag_and_gangs_of_the_digits_config(no_ray, isolated, capsys):
    code = main(["plan", "configs/digits.yaml", *_sets(isolated)])

    out, err = capsys.readouterr()
    assert code == EXIT_OK, out + err
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "2 × {CPU: 1} PACK" in lines["train"] and lines["train"].rstrip().endswith("feasible")
    assert "prepare,train" in lines["evaluate"]
    assert _no_runtime_started(no_ray)


def test_a_gpu_gang_run_on_a_cpu_only_machine_fails_at_once_naming_the_step_and_gpu(no_ray, tmp_path, capsys):
    storage = tmp_path / "rto-runs"
    overrides = [f"storage={storage}", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]

    code = main(["run", "configs/digits_gpu.yaml", *_sets(overrides)])

    out, err = capsys.readouterr()
    assert code == EXIT_INFEASIBLE, out + err
    (line,) = err.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"rto: error: {GPU_GANG}; the cluster has no GPU at all")
    assert not storage.exists() and _no_runtime_started(no_ray)  # nothing started, nothing recorded
