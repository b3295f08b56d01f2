"""Mapped steps (``map_over=``) and fan-in, through the runner's fake backend."""

from __future__ import annotations

from pathlib import Path

import yaml

from raytrain_orch.cli.main import main as rto
from raytrain_orch.core.config import parse_config
from raytrain_orch.core.errors import PipelineFailedError
from raytrain_orch.core.plan import build_plan
from raytrain_orch.core.run_view import RunView
from raytrain_orch.engine.runner import Runner
from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.fakes import FakeBackend, InfraFault
from tests.pipelines import mapped


class MapRun:
    def __init__(self, tmp_path: Path, steps: dict | None = None, script: dict | None = None):
        raw = {
            "name": "segments",
            "pipeline": "tests.pipelines.mapped:segments",
            "storage": str(tmp_path / "runs"),
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            "steps": steps or {},
        }
        self.config = parse_config(yaml.safe_dump(raw), "segments.yaml")
        self.store = RunStore(Storage(self.config.storage))
        self.backend = FakeBackend(script)
        self.records: list[dict] = []

    def __call__(self, run_id: str = "r1", **options):
        plan = build_plan(self.config, mapped.segments)
        runner = Runner(
            self.config, mapped.segments, plan, self.backend, self.store, on_event=self.records.append, **options
        )
        try:
            return runner.run(run_id)
        except PipelineFailedError:
            return self.store.load(run_id)

    def events(self, name: str) -> list[dict]:
        return [r for r in self.records if r["event"] == name]


def items(names):
    return {"split": {"params": {"names": names}}}


def test_each_item_runs_as_its_own_unit_and_the_fan_in_gets_them_in_order(tmp_path):
    run = MapRun(tmp_path, items(["north", "south", "east"]))

    state = run()

    assert state.status is Status.SUCCEEDED
    assert [state.steps[f"fit[{i}]"].item for i in range(3)] == ["north", "south", "east"]
    assert [state.steps[f"fit[{i}]"].metrics["index"] for i in range(3)] == [0.0, 1.0, 2.0]
    assert state.steps["fit"].items == 3 and state.steps["fit"].status is Status.SUCCEEDED
    assert state.steps["pick"].metrics == {"units": 3.0, "longest": 5.0, "first_index": 0.0}
    assert run.events("step_mapped")[0]["items"] == 3


def test_a_mapped_step_over_no_items_is_done_and_its_fan_in_gets_an_empty_list(tmp_path):
    run = MapRun(tmp_path, items([]))

    state = run()

    assert state.status is Status.SUCCEEDED and state.steps["fit"].items == 0
    assert state.steps["pick"].metrics == {"units": 0.0, "longest": 0.0, "first_index": -1.0}


def test_a_changed_item_list_recomputes_only_the_new_items(tmp_path):
    MapRun(tmp_path, items(["north", "south"]))("r1")
    run = MapRun(tmp_path, items(["north", "south", "west"]))

    state = run("r2")

    statuses = [state.steps[f"fit[{i}]"].status for i in range(3)]
    assert statuses == [Status.CACHED, Status.CACHED, Status.SUCCEEDED]
    assert [c for c in run.backend.calls if c[0].startswith("fit")] == [("fit[2]", 1)]
    assert state.steps["pick"].status is Status.SUCCEEDED  # its input changed: computed again


def test_a_flaky_item_is_retried_alone(tmp_path):
    retries = {**items(["a", "b", "c"]), "fit": {"retries": {"max": 2, "backoff_s": 0.01}}}
    run = MapRun(tmp_path, retries, script={"fit[1]": [InfraFault("worker died")]})

    state = run()

    assert state.status is Status.SUCCEEDED
    assert sorted(c for c in run.backend.calls if c[0].startswith("fit")) == [
        ("fit[0]", 1),
        ("fit[1]", 1),
        ("fit[1]", 2),
        ("fit[2]", 1),
    ]


def test_all_runs_every_item_and_fails_naming_the_failed_ones(tmp_path):
    steps = {**items(["a", "bb", "ccc", "dddd"]), "fit": {"params": {"fail": ["bb"]}, "map": {"max_concurrency": 1}}}
    run = MapRun(tmp_path, steps)

    state = run()

    assert state.status is Status.FAILED
    assert [state.steps[f"fit[{i}]"].status for i in range(4)] == [
        Status.SUCCEEDED,
        Status.FAILED,
        Status.SUCCEEDED,
        Status.SUCCEEDED,
    ]
    assert state.steps["fit"].error == "item(s) fit[1] failed"
    assert state.steps["pick"].status is Status.SKIPPED


def test_fail_fast_skips_the_items_not_started_yet(tmp_path):
    steps = {
        **items(["a", "bb", "ccc", "dddd"]),
        "fit": {"params": {"fail": ["bb"]}, "map": {"max_concurrency": 1, "failure": "fail_fast"}},
    }
    run = MapRun(tmp_path, steps)

    state = run()

    assert [state.steps[f"fit[{i}]"].status for i in range(4)] == [
        Status.SUCCEEDED,
        Status.FAILED,
        Status.SKIPPED,
        Status.SKIPPED,
    ]
    assert state.steps["fit"].status is Status.FAILED


def test_max_concurrency_caps_the_items_running_at_once(tmp_path):
    mapped.RUNNING.update(now=0, most=0)
    steps = {**items(["a", "b", "c", "d", "e"]), "fit": {"params": {"seconds": 0.2}, "map": {"max_concurrency": 2}}}

    state = MapRun(tmp_path, steps)()

    assert state.status is Status.SUCCEEDED
    assert mapped.RUNNING["most"] == 2  # two at once, never more


def test_rerun_of_a_mapped_step_reruns_every_item(tmp_path):
    MapRun(tmp_path, items(["a", "b"]))("r1")
    run = MapRun(tmp_path, items(["a", "b"]))

    state = run("r2", rerun=["fit"])

    assert [state.steps[f"fit[{i}]"].status for i in range(2)] == [Status.SUCCEEDED, Status.SUCCEEDED]
    assert state.steps["split"].status is Status.CACHED


def test_the_view_counts_a_mapped_steps_items_and_logs_find_one_item(tmp_path, capsys):
    steps = {**items(["a", "bb", "ccc", "dddd"]), "fit": {"params": {"fail": ["bb"]}}}
    run = MapRun(tmp_path, steps)
    run()

    view = RunView.of(run.records)

    assert view.step("fit").item_counts() == "3/4 items done, 1 failed"
    assert view.step("fit[1]").parent == "fit" and view.step("fit[1]").state == "failed"
    assert rto(["logs", "r1", "--step", "fit", "--item", "7", "--storage", str(tmp_path / "runs")]) == 2
    assert "step fit has 4 item(s)" in capsys.readouterr().err


def test_a_resumed_run_reuses_the_finished_items_and_runs_only_the_others(tmp_path):
    failing = MapRun(tmp_path, items(["a", "bb", "ccc"]), script={"fit[2]": [ValueError("no data yet")]})
    first = failing("r1")
    assert first.status is Status.FAILED
    fixed = MapRun(tmp_path, items(["a", "bb", "ccc"]))

    plan = build_plan(fixed.config, mapped.segments)
    runner = Runner(fixed.config, mapped.segments, plan, fixed.backend, fixed.store, on_event=fixed.records.append)
    state = runner.run("r1", resume=fixed.store.load("r1"))

    assert state.status is Status.SUCCEEDED
    assert [c for c in fixed.backend.calls if c[0].startswith("fit")] == [("fit[2]", 2)]  # its second attempt
    assert [state.steps[f"fit[{i}]"].status for i in range(3)] == [Status.CACHED, Status.CACHED, Status.SUCCEEDED]
