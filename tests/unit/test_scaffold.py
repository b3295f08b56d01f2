"""``rto schema`` and ``rto init``: the schema editors check configs against, and a new pipeline
written from the templates (its run is tests/e2e/test_wheel.py's, from an installed wheel)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from raytrain_orch.cli.main import main
from raytrain_orch.core.pipeline import load_pipeline
from raytrain_orch.core.schema import MODELINE, config_schema
from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_names_its_schema_which_is_current_and_accepts_it(config: Path):
    first = config.read_text().splitlines()[0]
    assert first.startswith(MODELINE), f"{config.name}: the first line is not the yaml-language-server modeline"
    schema_file = config.parent / first.removeprefix(MODELINE)
    raw = yaml.safe_load(config.read_text())
    current = config_schema(load_pipeline(raw["pipeline"], REPO))
    assert json.loads(schema_file.read_text()) == current, (
        f"{schema_file} is stale: rto schema {config.relative_to(REPO)} > {schema_file.relative_to(REPO)}"
    )
    jsonschema.validate(raw, current)


def test_the_schema_rejects_what_the_config_loader_rejects():
    schema = config_schema(load_pipeline("jobs.digits:pipeline", REPO))
    raw = yaml.safe_load((REPO / "configs" / "digits.yaml").read_text())

    for bad in (
        {**raw, "mlfow": {}},  # a top-level typo
        {**raw, "steps": {**raw["steps"], "trian": {}}},  # no such step
        {**raw, "steps": {**raw["steps"], "train": {**raw["steps"]["train"], "params": {"epoch": 3}}}},  # a param typo
        {**raw, "steps": {**raw["steps"], "train": {**raw["steps"]["train"], "params": {"lr": -1}}}},  # out of range
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    elastic = {**raw, "steps": {**raw["steps"], "train": {**raw["steps"]["train"], "scaling": {"num_workers": [1, 4]}}}}
    jsonschema.validate(elastic, schema)


def test_rto_schema_prints_the_schema_with_the_pipelines_params(capsys):
    assert main(["schema", str(REPO / "configs" / "digits.yaml")]) == 0
    printed = json.loads(capsys.readouterr().out)
    train = printed["properties"]["steps"]["properties"]["train"]
    assert set(train["properties"]["params"]["properties"]) == {"epochs", "hidden", "lr", "batch_size", "seed"}

    assert main(["schema"]) == 0
    generic = json.loads(capsys.readouterr().out)
    assert "hang" in generic["properties"] and "steps" in generic["properties"]


def test_rto_init_writes_a_pipeline_its_config_and_schema_and_never_overwrites(tmp_path, capsys):
    assert main(["init", "churn", "--dir", str(tmp_path)]) == 0
    job, config = tmp_path / "jobs" / "churn.py", tmp_path / "configs" / "churn.yaml"
    schema = tmp_path / "configs" / "schema" / "churn.json"
    assert job.exists() and config.exists() and schema.exists() and (tmp_path / "jobs" / "__init__.py").exists()
    assert config.read_text().startswith(f"{MODELINE}schema/churn.json\n")
    raw = yaml.safe_load(config.read_text())
    jsonschema.validate(raw, json.loads(schema.read_text()))
    assert "rto run " in capsys.readouterr().out

    edited = job.read_text() + "# mine\n"
    job.write_text(edited)
    assert main(["init", "churn", "--dir", str(tmp_path)]) == 2
    assert "jobs/churn.py already exists; pick another name, or move it away first" in capsys.readouterr().err
    assert job.read_text() == edited  # nothing lost

    assert main(["init", "Bad-Name", "--dir", str(tmp_path)]) == 2
    assert "cannot name a pipeline; use lower-case letters, digits and _" in capsys.readouterr().err


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_rto_completion_completes_the_commands(shell, capsys):
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert "rto" in script and "submit" in script and "init" in script
