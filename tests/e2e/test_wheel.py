"""The project as a user installs it: ``make dist``'s wheel in a fresh venv, no editable checkout,
used from a directory outside the checkout — ``rto --help``, ``python -m raytrain_orch``,
``rto init`` (the templates are package data), ``rto validate``, and the generated pipeline run
end to end.

The fresh venv takes its third-party packages (Ray, torch, MLflow) from this venv's
site-packages through a path file, which Python adds to ``sys.path`` without running the path
files there, so this checkout's editable install of raytrain_orch is not seen: only the wheel
provides it. Installing Ray and torch again would take minutes and prove nothing of the wheel.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e


#: A user's shell outside the checkout: no PYTHONPATH (a test run may point it at the checkout).
OUTSIDE = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run(*argv: str, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(
        list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**OUTSIDE, **(env or {})}
    )
    assert done.returncode == 0, (
        f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--wheel", "--sdist", "--outdir", str(out), ".", cwd=REPO)
    (built,) = out.glob("raytrain_orch-*.whl")
    assert list(out.glob("raytrain_orch-*.tar.gz"))
    return built


def test_the_wheel_holds_the_package_its_templates_and_its_console_script(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "raytrain_orch/templates/pipeline.py.tmpl" in names and "raytrain_orch/templates/config.yaml.tmpl" in names
    assert not any(name.startswith(("tests/", "jobs/", "bench/")) for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "rto = raytrain_orch.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_from_the_wheel_it_scaffolds_validates_and_runs_a_pipeline_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv), cwd=tmp_path)
    python, rto = venv / "bin" / "python", venv / "bin" / "rto"
    site = Path(
        run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).stdout.strip()
    )
    (site / "third_party.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # Ray, torch, MLflow: not ours
    missing = subprocess.run(
        [str(python), "-c", "import raytrain_orch"], cwd=tmp_path, capture_output=True, text=True, env=OUTSIDE
    )
    assert missing.returncode != 0 and "No module named 'raytrain_orch'" in missing.stderr  # no checkout leaks in
    run(str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel), cwd=tmp_path)

    project = tmp_path / "project"
    project.mkdir()
    assert "init" in run(str(rto), "--help", cwd=project).stdout
    assert "usage: rto" in run(str(python), "-m", "raytrain_orch", "--help", cwd=project).stdout
    origin = run(str(python), "-c", "import raytrain_orch; print(raytrain_orch.__file__)", cwd=project).stdout
    assert origin.startswith(str(site)), origin  # the installed wheel, not the checkout

    run(str(rto), "init", "churn", cwd=project)
    assert "valid" in run(str(rto), "validate", "configs/churn.yaml", cwd=project).stdout
    done = run(
        str(rto), "run", "configs/churn.yaml", "--throwaway-ray", "--set", "train.params.epochs=3",
        cwd=project, env={"RTO_PLAIN_PROGRESS": "1"},
    )  # fmt: skip
    assert re.search(r"run churn-\S+ SUCCEEDED", done.stdout), done.stdout[-3000:]
    accuracy = float(re.search(r"test_accuracy=([0-9.]+)", done.stdout).group(1))
    assert accuracy >= 0.8  # the generated dataset is learnable: the pipeline trains, not only runs
    assert (project / "rto-runs").is_dir() and (project / "mlflow.db").exists()
