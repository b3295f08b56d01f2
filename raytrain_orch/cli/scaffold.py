"""``rto init`` (a new pipeline that runs as it is), ``rto schema`` (the config's JSON Schema for
editors) and ``rto completion`` (shell completion, made by shtab from the CLI's own parser)."""

from __future__ import annotations

import argparse
import json
import keyword
import re
from importlib import resources
from pathlib import Path
from string import Template

from raytrain_orch.cli.command import Command
from raytrain_orch.core.errors import EXIT_OK, ConfigError
from raytrain_orch.core.schema import config_schema

_NAME = re.compile(r"[a-z][a-z0-9_]{0,49}")


def schema_path(config_dir: Path, name: str) -> Path:
    """Where a pipeline's schema lives, beside its configs (their modeline points there)."""
    return config_dir / "schema" / f"{name}.json"


def cmd_init(args: argparse.Namespace) -> int:
    name, root = args.name, Path(args.dir)
    if not _NAME.fullmatch(name) or keyword.iskeyword(name):
        raise ConfigError(
            f"{name!r} cannot name a pipeline; use lower-case letters, digits and _ (a Python module "
            "name), e.g. churn or fraud_v2"
        )
    job, config = root / "jobs" / f"{name}.py", root / "configs" / f"{name}.yaml"
    schema = schema_path(root / "configs", name)
    for path in (job, config, schema):
        if path.exists():
            raise ConfigError(f"{path} already exists; pick another name, or move it away first")
    templates = resources.files("raytrain_orch") / "templates"
    code = Template((templates / "pipeline.py.tmpl").read_text()).substitute(name=name)
    texts = {
        job: code,
        config: Template((templates / "config.yaml.tmpl").read_text()).substitute(name=name),
        schema: json.dumps(config_schema(_pipeline_of(code, name)), indent=2) + "\n",
    }
    for directory in (job.parent, schema.parent):
        directory.mkdir(parents=True, exist_ok=True)
    package = job.parent / "__init__.py"
    if not package.exists():
        package.write_text('"""The pipelines of this project (one module each)."""\n')
    for path, text in texts.items():  # all or nothing: every text was made before the first write
        path.write_text(text)
        print(f"wrote {path}")
    print(f"run it:   rto run {config}")
    print(f"then put your data in prepare() and your model in Model, in {job}")
    return EXIT_OK


def _pipeline_of(code: str, name: str):
    """The Pipeline a new module's code declares, imported from a scratch copy (the project's
    ``jobs`` package may be another one already imported)."""
    import importlib.util
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rto-init-") as scratch:
        path = Path(scratch) / f"{name}.py"
        path.write_text(code)
        spec = importlib.util.spec_from_file_location(f"_rto_init_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.pipeline


def write_schema(spec: str, path: Path, search_path: Path | None = None) -> None:
    from raytrain_orch.core.pipeline import load_pipeline

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config_schema(load_pipeline(spec, search_path)), indent=2) + "\n")


def cmd_schema(args: argparse.Namespace) -> int:
    pipeline = None
    if args.config:
        from raytrain_orch.core.config import load_config
        from raytrain_orch.core.pipeline import load_pipeline

        pipeline = load_pipeline(load_config(args.config).pipeline)
    print(json.dumps(config_schema(pipeline), indent=2))
    return EXIT_OK


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    print(shtab.complete(args.parser, shell=args.shell))
    return EXIT_OK


def add_init_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the pipeline's name (a Python module name: lower-case letters, digits, _)")
    parser.add_argument("--dir", default=".", help="the project directory to write into (default: here)")


def add_schema_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="pipeline config, e.g. configs/digits.yaml")


def add_completion_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shell", choices=["bash", "zsh"])


INIT = Command(
    "init",
    "write a new pipeline that runs as it is: jobs/NAME.py, configs/NAME.yaml and its schema for editors",
    add_init_arguments,
    cmd_init,
)
SCHEMA = Command(
    "schema",
    "print the config's JSON Schema (with each step's params when a config names its pipeline), for editors",
    add_schema_arguments,
    cmd_schema,
)
COMPLETION = Command(
    "completion", "print the shell completion script for rto (bash or zsh)", add_completion_arguments, cmd_completion
)
