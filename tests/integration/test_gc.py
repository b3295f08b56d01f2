"""``rto gc``, ``rto pin`` and ``rto unpin`` on real runs' records, on local storage and on a real
S3 API (moto's server), with a real MLflow model registry (SQLite). The runs are made by the
runner with the fake backend (tests/retained.py): no Ray."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
from mlflow.tracking import MlflowClient

from raytrain_orch.cli.main import main
from raytrain_orch.core.errors import EXIT_OK, EXIT_USAGE
from raytrain_orch.core.events import Event, make
from raytrain_orch.store.retention import DAY_S
from raytrain_orch.store.state import RunState, Status, cache_path, this_driver
from tests.conftest import free_port
from tests.retained import Retained


@pytest.fixture
def local(tmp_path) -> Retained:
    return Retained(str(tmp_path / "runs"), tmp_path)


@dataclass
class Registry:
    """A real MLflow store (SQLite) with a registered model ``retained``."""

    uri: str
    client: MlflowClient
    experiment: str

    def register(self, runs: Retained, state: RunState, how: str = "step") -> None:
        """Register a version of ``retained`` that comes from run ``state``: logged in its train
        step's MLflow run (``step``), in a run only its ``rto.run_id`` tag ties to it (``tag``, as
        a trial's), or with its files in the run's directory and no run (``source``)."""
        mlflow_run = self.client.create_run(self.experiment, tags={"rto.run_id": state.run_id})
        if how == "step":
            state.steps["train"].mlflow_run_id = mlflow_run.info.run_id
        state.mlflow = {"tracking_uri": self.uri, "experiment_id": self.experiment, "run_id": None}
        runs.store.save(state)
        if how == "source":
            source = runs.store.storage.uri(*runs.store.run_path(state.run_id, "checkpoints", "model"))
            self.client.create_model_version("retained", source=source)
        else:
            source = f"{mlflow_run.info.artifact_uri}/model"
            self.client.create_model_version("retained", source=source, run_id=mlflow_run.info.run_id)


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    directory = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("retained", artifact_location=(directory / "mlruns").as_uri())
    client.create_registered_model("retained")
    return Registry(uri, client, experiment)


def rto(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def freed(out: str) -> int:
    """The bytes ``rto gc`` says it freed (or would free)."""
    match = re.search(r"(?:would free|freed) \S+ \S+ \((\d+) bytes\)", out)
    assert match, out
    return int(match.group(1))


def heavy(runs: Retained, state: RunState) -> set[str]:
    """The paths of a run's checkpoints and of the cache entries its steps reference."""
    entries = ["/".join(cache_path(name, step.cache_key)) + "/" for name, step in state.steps.items()]
    prefixes = (f"runs/{state.run_id}/checkpoints/", *entries)
    return {path for path in runs.files() if path.startswith(prefixes)}


def test_in_progress_pinned_and_registered_runs_keep_everything(runs, registry, capsys):
    registered = runs.run("registered", rows=1)
    registry.register(runs, registered)
    registry.register(runs, runs.run("tagged", rows=2), how="tag")
    registry.register(runs, runs.run("sourced", rows=7), how="source")
    runs.run("pinned", rows=3)
    running = runs.run("running", rows=4)
    running.status, running.ended_at, running.driver = Status.RUNNING, None, this_driver()  # this process: alive
    runs.store.save(running)
    plain = runs.run("plain", rows=5)
    runs.run("newest", rows=6)
    assert rto(capsys, "pin", "pinned", "--storage", runs.root)[0] == EXIT_OK
    kept = {s.run_id: heavy(runs, s) for s in runs.store.list() if s.run_id != "plain"}
    collected = heavy(runs, plain)
    before = runs.files()

    code, out, _ = rto(capsys, "gc", "--keep-last", "1", "--storage", runs.root)

    after = runs.files()
    removed = set(before) - set(after)
    assert code == EXIT_OK
    assert removed == collected and collected  # plain's checkpoints and cache entries, nothing else
    assert all(paths <= set(after) and paths for paths in kept.values())
    assert {f"runs/plain/{name}" for name in ("state.json", "config.yaml", "plan.json")} <= set(after)
    assert any(path.startswith(("runs/plain/events.jsonl", "runs/plain/events/")) for path in after)  # the event log
    assert freed(out) == sum(before[path] for path in removed)
    for run_id, why in [
        ("registered", "model retained version"),
        ("tagged", "model retained version"),
        ("sourced", "model retained version"),
        ("pinned", "pinned"),
        ("running", "not finished (RUNNING)"),
        ("newest", "one of the 1 newest"),
    ]:
        assert re.search(rf"^{run_id}\s.*keep\s+{re.escape(why)}", out, re.MULTILINE), out

    listed = json.loads(rto(capsys, "runs", "--json", "--storage", runs.root)[1])
    marks = {r["run_id"]: r["collected"] for r in listed}
    assert marks["plain"]["freed_bytes"] == freed(out)
    assert [run_id for run_id, mark in marks.items() if mark] == ["plain"]
    table = rto(capsys, "runs", "--storage", runs.root)[1]
    assert re.search(r"^plain\s+retained\s+SUCCEEDED \(collected\)", table, re.M), table
    status = rto(capsys, "status", "plain", "--storage", runs.root)[1]
    assert "collected by rto gc" in status and "the record stays" in status


def test_dry_run_changes_nothing_and_says_what_gc_then_frees(runs, capsys):
    for index, run_id in enumerate(("a", "b", "c")):
        runs.run(run_id, rows=index + 1)
    before = runs.files()

    code, out, _ = rto(capsys, "gc", "--keep-last", "1", "--dry-run", "--storage", runs.root)

    assert code == EXIT_OK and "would free" in out
    assert runs.files() == before
    assert all(not state.collected for state in runs.store.list())

    done = rto(capsys, "gc", "--keep-last", "1", "--storage", runs.root)[1]

    removed = set(before) - set(runs.files())
    assert freed(done) == freed(out) == sum(before[path] for path in removed) > 0


def test_a_collected_runs_checkpoint_that_a_kept_run_reuses_stays(local, capsys):
    local.run("computed", rows=10)
    local.run("reused", rows=10)  # every step a cache hit: its train artifact is computed's checkpoint
    before = local.files()

    out = rto(capsys, "gc", "--keep-last", "1", "--storage", local.root)[1]

    assert set(local.files()) == set(before)
    assert re.search(r"kept runs/computed/checkpoints/train-\w+: run reused uses it", out), out
    assert local.store.load("computed").collected["freed_bytes"] == 0
    local.run("again", rows=10)
    assert local.ran("again") == []  # what the kept run uses is whole: all cache hits


def test_what_was_kept_for_a_run_goes_once_that_run_is_collected(local, capsys):
    computed = local.run("computed", rows=10)
    local.run("reused", rows=10)
    rto(capsys, "gc", "--keep-last", "1", "--storage", local.root)
    local.run("other", rows=20)
    left = heavy(local, computed)

    out = rto(capsys, "gc", "--keep-last", "1", "--storage", local.root)[1]

    assert left and not heavy(local, computed)  # computed's checkpoints and the entries both runs used
    assert re.search(r"^computed\s.*collected\s+1 train run's checkpoints, 3 cache entries", out, re.M), out
    assert local.store.load("computed").collected["held"] == []


def test_mlflow_out_of_reach_keeps_the_runs_that_registered_a_model(local, capsys):
    unreachable = f"http://127.0.0.1:{free_port()}"
    for run_id in ("registered", "plain"):
        state = local.run(run_id, rows=len(run_id))
        state.mlflow = {"tracking_uri": unreachable, "experiment_id": "1", "run_id": "r"}
        local.store.save(state)
    local.store.append_event(
        "registered", make(Event.MODEL_REGISTERED, step="evaluate", attempt=1, name="m", version="3", alias=None)
    )

    out = rto(capsys, "gc", "--keep-last", "0", "--storage", local.root)[1]

    assert re.search(r"^registered\s.*keep\s+registered a model \(MLflow unreachable\)", out, re.M), out
    assert re.search(r"^plain\s.*collected", out, re.M), out
    notes = [line for line in out.splitlines() if unreachable in line]
    assert len(notes) == 1 and "kept 1 run(s) that registered a model" in notes[0]


def test_keep_best_keeps_each_pipelines_best_run(local, capsys):
    for run_id, rows in (("few", 2), ("many", 10), ("some", 4)):  # test_accuracy = 1 - 1/rows
        local.run(run_id, rows=rows)

    report = json.loads(
        rto(capsys, "gc", "--keep-best", "evaluate.test_accuracy", "--json", "--storage", local.root)[1]
    )

    actions = {r["run_id"]: r["action"] for r in report["runs"]}
    assert actions == {"few": "collect", "many": "keep", "some": "collect"}


def test_older_than_collects_only_runs_that_ended_before(local, capsys):
    for run_id, days_ago in (("old", 10), ("recent", 2)):
        state = local.run(run_id, rows=days_ago)
        state.ended_at -= days_ago * DAY_S
        local.store.save(state)

    report = json.loads(rto(capsys, "gc", "--older-than", "5", "--json", "--storage", local.root)[1])

    actions = {r["run_id"]: r["action"] for r in report["runs"]}
    assert actions == {"old": "collect", "recent": "keep"}
    assert report["freed_bytes"] == sum(r["bytes"] for r in report["runs"] if r["action"] == "collect") > 0


def test_gc_without_a_selector_refuses_and_names_them(local, capsys):
    local.run("a", rows=1)
    before = local.files()

    code, out, err = rto(capsys, "gc", "--storage", local.root)

    assert code == EXIT_USAGE and out == ""
    assert err.count("\n") == 1 and "--keep-last N, --older-than DAYS or --keep-best METRIC" in err
    assert local.files() == before


def test_unpin_lets_gc_collect_the_run(local, capsys):
    local.run("a", rows=1)
    local.run("b", rows=2)
    rto(capsys, "pin", "a", "--storage", local.root)
    assert rto(capsys, "status", "a", "--storage", local.root)[1].count("pinned: rto gc keeps it") == 1

    assert "unpinned" in rto(capsys, "unpin", "a", "--storage", local.root)[1]
    rto(capsys, "gc", "--keep-last", "1", "--storage", local.root)

    assert local.store.load("a").collected is not None
    code, _, err = rto(capsys, "pin", "nope", "--storage", local.root)
    assert code != EXIT_OK and "no run 'nope'" in err
