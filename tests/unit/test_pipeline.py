"""Declaring pipelines: DAG checks, step signatures, and importing ``module:attribute``."""

from __future__ import annotations

import sys
import uuid

import pytest

from raytrain_orch.core.errors import ConfigError, PipelineDefinitionError
from raytrain_orch.core.pipeline import Params, Pipeline, load_pipeline

from .conftest import REPO


class SomeParams(Params):
    n: int = 1


def test_cycle_is_reported_with_its_steps():
    pipeline = Pipeline("loop")

    @pipeline.task
    def a(ctx, c): ...

    @pipeline.task
    def b(ctx, a): ...

    @pipeline.task
    def c(ctx, b): ...

    @pipeline.task
    def outside(ctx): ...

    with pytest.raises(PipelineDefinitionError) as raised:
        pipeline.order()

    message = str(raised.value)
    assert message.startswith("pipeline 'loop': steps form a cycle (")
    cycle = message.split("(", 1)[1].split(")", 1)[0].split(" -> ")
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"a", "b", "c"}


def test_step_taking_its_own_output_is_rejected():
    pipeline = Pipeline("p")

    with pytest.raises(PipelineDefinitionError, match=r"step 'train' takes its own output as an input"):

        @pipeline.task
        def train(ctx, train): ...


def test_unknown_input_suggests_the_nearest_step():
    pipeline = Pipeline("p")

    @pipeline.task
    def prepare(ctx): ...

    @pipeline.task
    def train(ctx, prepar): ...

    with pytest.raises(PipelineDefinitionError) as raised:
        pipeline.order()

    assert (
        str(raised.value)
        == "pipeline 'p': step 'train' takes input 'prepar', but no step has that name; did you mean 'prepare'?"
    )


def test_unknown_input_with_no_near_name_lists_the_steps():
    pipeline = Pipeline("p")

    @pipeline.task
    def prepare(ctx): ...

    @pipeline.task
    def train(ctx, zzz): ...

    with pytest.raises(PipelineDefinitionError, match=r"no step has that name; steps are \['prepare', 'train'\]"):
        pipeline.order()


def test_duplicate_step_name_is_rejected():
    pipeline = Pipeline("p")

    @pipeline.task
    def prepare(ctx): ...

    with pytest.raises(PipelineDefinitionError, match=r"pipeline 'p': step 'prepare' is declared twice; rename one"):

        @pipeline.task(name="prepare")
        def other(ctx): ...


def test_empty_pipeline_is_rejected():
    with pytest.raises(PipelineDefinitionError, match=r"pipeline 'empty' declares no steps"):
        Pipeline("empty").order()


@pytest.mark.parametrize("define", ["def f(context): ...", "def f(): ...", "def f(params, ctx): ..."])
def test_first_parameter_must_be_ctx(define):
    namespace: dict = {}
    exec(define, namespace)

    with pytest.raises(PipelineDefinitionError, match=r"step 'f': the first parameter must be 'ctx'"):
        Pipeline("p").task(namespace["f"])


def test_params_declared_but_not_taken():
    pipeline = Pipeline("p")

    with pytest.raises(
        PipelineDefinitionError,
        match=r"step 'f': declares params=SomeParams but its function has no 'params' parameter",
    ):

        @pipeline.task(params=SomeParams)
        def f(ctx): ...


def test_params_taken_but_not_declared():
    pipeline = Pipeline("p")

    with pytest.raises(
        PipelineDefinitionError, match=r"step 'f': its function takes 'params' but the step declares none"
    ):

        @pipeline.train
        def f(ctx, params): ...


def test_params_must_be_a_pydantic_model():
    pipeline = Pipeline("p")

    with pytest.raises(
        PipelineDefinitionError, match=r"step 'f': params= must be a Params subclass, got <class 'dict'>"
    ):

        @pipeline.task(params=dict)
        def f(ctx, params): ...


@pytest.mark.parametrize(
    ("define", "shown"),
    [
        ("def f(ctx, *inputs): ...", "'*inputs' is variadic positional"),
        ("def f(ctx, **inputs): ...", "'**inputs' is variadic keyword"),
        ("def f(ctx, /, prepare): ...", "'ctx' is positional-only"),
    ],
)
def test_parameters_that_cannot_be_passed_by_keyword_are_rejected(define, shown):
    # The runner calls steps as fn(ctx=…, params=…, prepare=…); these would fail only at run time.
    namespace: dict = {}
    exec(define, namespace)

    with pytest.raises(PipelineDefinitionError) as raised:
        Pipeline("p").task(namespace["f"])

    assert f"step 'f': parameter {shown}; steps are called by keyword" in str(raised.value)


def test_inputs_are_the_parameters_after_ctx_and_params():
    pipeline = Pipeline("p")

    @pipeline.task
    def prepare(ctx): ...

    @pipeline.train(params=SomeParams)
    def train(ctx, params, prepare): ...

    step = pipeline.steps["train"]
    assert step.kind == "train"
    assert step.inputs == ("prepare",)
    assert step.params_model is SomeParams


def test_steps_may_be_declared_in_any_order():
    pipeline = Pipeline("p")

    @pipeline.task
    def last(ctx, middle): ...

    @pipeline.task
    def middle(ctx, first): ...

    @pipeline.task
    def first(ctx): ...

    assert pipeline.order() == ["first", "middle", "last"]


def test_digits_order_puts_prepare_first_and_register_last():
    from jobs.digits import pipeline

    order = pipeline.order()

    assert order == ["prepare", "train", "evaluate", "register"]
    assert pipeline.steps["train"].kind == "train"
    assert pipeline.steps["register"].inputs == ("prepare", "train", "evaluate")


def test_code_version_is_explicit_version_or_a_source_hash():
    pipeline = Pipeline("p")

    @pipeline.task(version="v2")
    def pinned(ctx): ...

    @pipeline.task
    def hashed(ctx):
        return 1

    edited = Pipeline("p")

    @edited.task
    def hashed(ctx):  # noqa: F811 - the same step with its body changed
        return 2

    assert pipeline.steps["pinned"].code_version() == "v2"
    assert len(pipeline.steps["hashed"].code_version()) == 16
    assert pipeline.steps["hashed"].code_version() != edited.steps["hashed"].code_version()


# --- load_pipeline -----------------------------------------------------------------------------


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    """A directory for throwaway pipeline modules; sys.path is restored afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path


def _write_module(directory, body: str) -> str:
    name = f"rto_unit_{uuid.uuid4().hex[:10]}"
    (directory / f"{name}.py").write_text(body)
    return name


def test_load_pipeline_returns_the_pipeline_object():
    from jobs.digits import pipeline

    assert load_pipeline("jobs.digits:pipeline", REPO) is pipeline


def test_load_pipeline_missing_module_says_where_it_looked(module_dir):
    with pytest.raises(ConfigError) as raised:
        load_pipeline("nosuch_pkg_rto.jobs:pipeline", module_dir)

    message = str(raised.value)
    assert f"cannot import 'nosuch_pkg_rto.jobs' (no module 'nosuch_pkg_rto' under {module_dir.resolve()})" in message
    assert "run rto from the project directory" in message


def test_load_pipeline_attribute_that_is_not_a_pipeline(module_dir):
    name = _write_module(module_dir, "pipeline = 42\n")

    with pytest.raises(ConfigError) as raised:
        load_pipeline(f"{name}:pipeline", module_dir)

    assert (
        str(raised.value)
        == f"pipeline: '{name}:pipeline' names int, not a raytrain_orch Pipeline; point it at your Pipeline object"
    )


def test_load_pipeline_missing_attribute(module_dir):
    name = _write_module(module_dir, "from raytrain_orch import Pipeline\npipe = Pipeline('x')\n")

    with pytest.raises(ConfigError, match=r"names nothing, not a raytrain_orch Pipeline"):
        load_pipeline(f"{name}:pipeline", module_dir)


def test_load_pipeline_surfaces_a_missing_dependency_of_the_users_module(module_dir):
    # The user's module exists but imports a package that is not installed: one line naming it.
    name = _write_module(module_dir, "import rto_unit_not_installed_dep\n")

    with pytest.raises(ConfigError) as raised:
        load_pipeline(f"{name}:pipeline", module_dir)

    assert str(raised.value).startswith(
        f"pipeline {name!r} imports a package this Python lacks (ModuleNotFoundError: No module named "
        "'rto_unit_not_installed_dep'); install it"
    )


def test_code_version_covers_same_module_helpers_the_step_uses(tmp_path, monkeypatch):
    """Editing a helper (a model class, a data function) changes the steps that call it, only those."""
    module = tmp_path / "helpers_job.py"
    template = """
from raytrain_orch import Pipeline
pipeline = Pipeline("h")

class Model:
    def width(self):
        return {width}

def load():
    return Model().width()

@pipeline.task
def uses_helper(ctx):
    return {{"w": load()}}

@pipeline.task
def standalone(ctx):
    return {{"x": 1}}
"""
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys

    versions = []
    for width in (1, 2):
        module.write_text(template.format(width=width))
        sys.modules.pop("helpers_job", None)
        steps = importlib.import_module("helpers_job").pipeline.steps
        versions.append((steps["uses_helper"].code_version(), steps["standalone"].code_version()))
    (helper_1, alone_1), (helper_2, alone_2) = versions
    assert helper_1 != helper_2  # Model.width changed, two calls away
    assert alone_1 == alone_2
