"""The digits pipeline on a real local Ray, with real Parquet files and a real MLflow store.

One Ray session and one full pipeline run serve the whole module; each test checks one thing a
user would look at afterwards.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from mlflow.tracking import MlflowClient

from raytrain_orch.cli import report as cli_report
from raytrain_orch.cli.wiring import execute
from raytrain_orch.core import constants
from raytrain_orch.core.errors import PipelineFailedError
from raytrain_orch.engine.driver import prepare
from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.conftest import isolated, write_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("digits")


@pytest.fixture(scope="module")
def digits(local_ray, digits_dir):
    """The default digits config, run once; returns (state, prepared, events)."""
    prepared = prepare("configs/digits.yaml", isolated(digits_dir))
    events: list[dict] = []
    state = execute(prepared, on_event=events.append)
    return state, prepared, events


@pytest.fixture(scope="module")
def mlflow_client(digits):
    _, prepared, _ = digits
    return MlflowClient(tracking_uri=prepared.config.mlflow.tracking_uri)


def _runs(client: MlflowClient, state) -> dict[str, object]:
    experiment = state.mlflow["experiment_id"]
    runs = client.search_runs([experiment], f"tags.`rto.run_id` = '{state.run_id}'")
    return {r.data.tags.get("rto.step", "pipeline"): r for r in runs}


def test_reaches_test_accuracy_of_at_least_95_percent(digits):
    state, _, _ = digits
    assert state.status is Status.SUCCEEDED
    assert state.steps["evaluate"].metrics["test_accuracy"] >= 0.95


def test_prepared_splits_are_parquet_files_readable_with_pyarrow(digits):
    state, _, _ = digits
    directory = Storage(state.steps["prepare"].artifact["storage_uri"]).path(*state.steps["prepare"].artifact["path"])
    tables = {name: pq.read_table(f"{directory}/{name}.parquet") for name in ("train", "val", "test")}
    assert sum(t.num_rows for t in tables.values()) == 1797  # every digit, each in one split
    assert tables["test"].num_rows == 360 and tables["train"].column_names[-1] == "label"
    train_mean = tables["train"]["p20"].to_numpy().mean()
    assert abs(train_mean) < 1e-4  # standardised with the train split's statistics
    assert set(tables["test"]["label"].to_pylist()) == set(range(10))  # stratified: all classes held out


def test_train_step_checkpoints_every_epoch_and_keeps_the_best(digits):
    state, prepared, _ = digits
    train = state.steps["train"]
    checkpoint = train.artifact["checkpoint"]
    manifest = json.loads(open(f"{checkpoint}/manifest.json").read())
    assert manifest["metrics"]["val_accuracy"] == pytest.approx(train.metrics["val_accuracy"])
    kept = [p.name for p in Path(checkpoint).parent.iterdir() if p.name.startswith("checkpoint_") and p.is_dir()]
    assert len(kept) == 2  # checkpoint.num_to_keep in configs/digits.yaml


def test_run_directory_holds_config_state_and_events(digits):
    state, prepared, events = digits
    store = RunStore(Storage(prepared.config.storage))
    assert store.load(state.run_id).status is Status.SUCCEEDED
    stored = Storage(prepared.config.storage)
    assert stored.exists("runs", state.run_id, constants.RESOLVED_CONFIG_FILE)
    recorded = [(e["event"], e.get("step")) for e in store.events(state.run_id)]
    assert recorded[0] == ("run_started", None) and recorded[-1] == ("run_finished", None)
    finished = [step for event, step in recorded if event == "step_succeeded"]
    assert finished == ["prepare", "train", "evaluate", "register"]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == list(range(20))  # one progress event per epoch, from rank 0


def test_epochs_record_their_timings_and_the_driver_its_start(digits):
    state, prepared, _ = digits
    recorded = RunStore(Storage(prepared.config.storage)).events(state.run_id)
    epochs = [e for e in recorded if e["event"] == "epoch"]
    assert len(epochs) == 20
    for e in epochs:
        assert e["sent_ts"] <= e["ts"]  # sent by rank 0, recorded by the driver
        assert e["epoch_s"] > 0 and e["report_s"] > 0 and e["log_s"] >= 0
    assert sum(e["epoch_s"] + e["report_s"] for e in epochs) < state.steps["train"].duration_s
    started = next(e["ts"] for e in recorded if e["event"] == "run_started")
    assert state.driver["process_started_at"] < started and state.driver["ray_connect_s"] >= 0


def test_the_run_report_adds_up_per_step_and_measures_every_gang(digits):
    state, prepared, _ = digits
    store = RunStore(Storage(prepared.config.storage))
    report = cli_report.load(store, store.load(state.run_id)).to_dict()
    assert report["status"] == "succeeded"
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["prepare", "train", "evaluate", "register"]
    for name, step in steps.items():
        assert step["state"] == "succeeded" and step["wall_s"] > 0
        assert abs(step["unaccounted_s"]) <= 0.02 * step["wall_s"], (name, step["parts"])
        assert step["wall_s"] == pytest.approx(state.steps[name].duration_s, rel=0.05, abs=0.2)
        assert step["utilisation"]["CPU"]["measured"], name  # every gang's processes sent their use
    epochs = [e for e in store.events(state.run_id) if e["event"] == "epoch"]
    train = steps["train"]["parts"]  # its work and checkpoint stalls are its epochs' own measures
    assert train["work"] == pytest.approx(sum(e["epoch_s"] + e["log_s"] for e in epochs), abs=0.01)
    assert train["checkpoint"] == pytest.approx(sum(e["report_s"] for e in epochs), abs=0.01)
    assert train["restart"] == train["hang"] == 0
    assert 0 < report["utilisation"]["CPU"]["efficiency"] <= 1
    assert report["critical_path"]["steps"] == ["prepare", "train", "evaluate", "register"]


def test_the_report_and_its_timeline_are_logged_to_the_pipeline_run(digits, mlflow_client, tmp_path):
    state, _, _ = digits
    parent = _runs(mlflow_client, state)["pipeline"]
    logged = {a.path for a in mlflow_client.list_artifacts(parent.info.run_id, "report")}
    assert logged == {f"report/{name}" for name in ("report.json", "report.txt", "timeline.html", "timeline.png")}
    page = Path(mlflow_client.download_artifacts(parent.info.run_id, "report/timeline.html", str(tmp_path)))
    html = page.read_text(encoding="utf-8")
    assert all(f'data-step="{step}"' in html for step in ("prepare", "train", "evaluate", "register"))
    assert 0 < parent.data.metrics["cpu_efficiency"] <= 1
    assert "cost_estimate" not in parent.data.metrics  # no cost: table, no cost


def test_mlflow_has_a_parent_run_with_one_finished_child_per_step(digits, mlflow_client):
    state, _, _ = digits
    runs = _runs(mlflow_client, state)
    parent = runs.pop("pipeline")
    assert parent.info.status == "FINISHED" and parent.info.run_id == state.mlflow["run_id"]
    assert sorted(runs) == ["evaluate", "prepare", "register", "train"]
    for step, run in runs.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED", step
    assert parent.data.metrics["test_accuracy"] == pytest.approx(state.steps["evaluate"].metrics["test_accuracy"])
    assert runs["evaluate"].data.metrics["test_accuracy"] >= 0.95
    assert parent.data.params["steps.train.params.lr"] == "0.05"  # the resolved config as params


def test_per_epoch_metrics_are_logged_once_from_rank_zero(digits, mlflow_client):
    state, _, _ = digits
    train_run = _runs(mlflow_client, state)["train"]
    history = mlflow_client.get_metric_history(train_run.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == list(range(20))  # 20 epochs, not 20 × 2 workers


def test_artifacts_and_registered_model(digits, mlflow_client):
    state, _, _ = digits
    runs = _runs(mlflow_client, state)
    assert "confusion_matrix.png" in [a.path for a in mlflow_client.list_artifacts(runs["evaluate"].info.run_id)]
    assert "config.yaml" in [a.path for a in mlflow_client.list_artifacts(runs["pipeline"].info.run_id)]
    versions = mlflow_client.search_model_versions("name='digits'")
    assert runs["register"].info.run_id in {v.run_id for v in versions}


def test_every_run_is_tagged_with_the_run_step_attempt_config_and_commit(digits, mlflow_client):
    state, _, _ = digits
    runs = _runs(mlflow_client, state)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    for step, run in runs.items():
        tags = run.data.tags
        assert tags["rto.run_id"] == state.run_id and tags["rto.config_hash"] == state.config_hash, step
        assert tags["rto.git_commit"] == commit and tags["mlflow.source.git.commit"] == commit, step
        if step != "pipeline":
            assert (tags["rto.step"], tags["rto.attempt"]) == (step, str(state.steps[step].attempts))


def test_exactly_one_train_run_with_its_metrics_once_per_epoch_from_rank_zero(digits, mlflow_client):
    state, _, _ = digits
    experiment = state.mlflow["experiment_id"]
    train_runs = mlflow_client.search_runs(
        [experiment], f"tags.`rto.run_id` = '{state.run_id}' AND tags.`rto.step` = 'train'"
    )
    assert len(train_runs) == 1  # 2 DDP workers, one attempt: one run, none per rank
    run_id = train_runs[0].info.run_id
    for metric in ("loss", "val_accuracy", "epoch_time_s", "throughput_samples_per_s"):
        steps = [m.step for m in mlflow_client.get_metric_history(run_id, metric)]
        assert sorted(steps) == list(range(20)), metric
    # System metrics start once rank 0 has loaded MLflow's monitors (in the background, as the loop starts).
    for metric in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        history = mlflow_client.get_metric_history(run_id, metric)
        steps = sorted(m.step for m in history)
        assert steps and steps == list(range(steps[0], 20)) and steps[0] <= 10, (metric, steps)
        assert 0 < statistics.median(m.value for m in history) and max(m.value for m in history) <= (
            100 if "percentage" in metric else 1e9
        ), metric


def test_throughput_is_the_training_split_over_the_epoch_time(digits, mlflow_client):
    state, prepared, _ = digits
    run_id = _runs(mlflow_client, state)["train"].info.run_id
    rows = state.steps["prepare"].metrics["rows_train"]
    times = {m.step: m.value for m in mlflow_client.get_metric_history(run_id, "epoch_time_s")}
    throughput = {m.step: m.value for m in mlflow_client.get_metric_history(run_id, "throughput_samples_per_s")}
    for epoch, seconds in times.items():
        assert throughput[epoch] == pytest.approx(rows / seconds, rel=0.01)


def test_train_run_holds_learning_curves_and_the_chosen_checkpoints_manifest(digits, mlflow_client, tmp_path):
    state, _, _ = digits
    run_id = _runs(mlflow_client, state)["train"].info.run_id
    assert "learning_curves.png" in [a.path for a in mlflow_client.list_artifacts(run_id)]
    png = Path(mlflow_client.download_artifacts(run_id, "learning_curves.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    manifest = json.loads(
        Path(mlflow_client.download_artifacts(run_id, "checkpoint/manifest.json", str(tmp_path))).read_text()
    )
    assert manifest["metrics"]["val_accuracy"] == pytest.approx(state.steps["train"].metrics["val_accuracy"])
    assert "state.pt" in manifest["files"]


def test_registered_model_has_a_signature_and_the_best_version_is_champion(digits, mlflow_client):
    import mlflow

    state, prepared, _ = digits
    uri = prepared.config.mlflow.tracking_uri
    mlflow.set_registry_uri(uri)
    mlflow.set_tracking_uri(uri)
    champion = mlflow_client.get_model_version_by_alias("digits", "champion")
    versions = mlflow_client.search_model_versions("name='digits'")
    best = max(versions, key=lambda v: float(v.tags["rto.test_accuracy"]))
    assert champion.version == best.version
    assert float(champion.tags["rto.test_accuracy"]) >= 0.95
    info = mlflow.models.get_model_info("models:/digits@champion")
    assert info.signature is not None and list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 64]
    assert list(info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 10]


def test_rto_status_shows_each_steps_cache_hit_artifact_and_mlflow_page(digits, digits_dir, capsys):
    from raytrain_orch.cli.main import main

    state, _, _ = digits
    assert main(["status", state.run_id, "--json", "--storage", str(digits_dir / "rto-runs")]) == 0
    shown = json.loads(capsys.readouterr().out)
    train = shown["steps"]["train"]
    assert train["cache_hit"] is False and train["artifact_uri"].endswith(state.steps["train"].artifact["path"][-1])
    assert (
        train["mlflow_url"]
        == f"http://127.0.0.1:5000/#/experiments/{state.mlflow['experiment_id']}/runs/{state.steps['train'].mlflow_run_id}"
    )
    assert (train["epoch"], train["total_epochs"]) == (20, 20)
    assert main(["status", state.run_id, "--storage", str(digits_dir / "rto-runs")]) == 0
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("STEP"))
    assert header.split() == [
        "STEP",
        "STATUS",
        "ATTEMPTS",
        "DURATION",
        "CACHE",
        "PROGRESS",
        "METRICS",
        "ARTIFACT",
        "MLFLOW",
        "RUN",
    ]
    train_row = next(line for line in table.splitlines() if line.startswith("train "))
    assert "epoch 20/20" in train_row and state.steps["train"].mlflow_run_id in train_row


def test_no_placement_group_of_the_run_is_left(digits):
    state, _, _ = digits
    groups = ray.util.placement_group_table().values()
    left = [g for g in groups if g["name"].startswith(f"rto/{state.run_id}") and g["state"] in ("CREATED", "PENDING")]
    assert left == []


# --- failures ----------------------------------------------------------------------------------


def _flaky(directory, **flaky_step) -> tuple:
    path = write_config(directory, "flaky", "tests.pipelines.flaky:pipeline", {"flaky": flaky_step})
    prepared = prepare(path)
    events: list[dict] = []
    return prepared, events


def test_user_error_fails_at_once_and_leaves_mlflow_runs_failed(local_ray, tmp_path):
    prepared, events = _flaky(tmp_path, params={"error": "ValueError", "failing_attempts": 5})
    with pytest.raises(PipelineFailedError, match="flaky.*ValueError: attempt 1 of step flaky failed on purpose"):
        execute(prepared, on_event=events.append)
    state = RunStore(Storage(prepared.config.storage)).latest()
    assert state.status is Status.FAILED
    assert state.steps["flaky"].status is Status.FAILED and state.steps["flaky"].attempts == 1  # no retry burned
    assert state.steps["after"].status is Status.SKIPPED
    client = MlflowClient(prepared.config.mlflow.tracking_uri)
    runs = _runs(client, state)
    assert runs["pipeline"].info.status == "FAILED"
    assert runs["flaky"].info.status == "FAILED" and runs["source"].info.status == "FINISHED"
    assert "after" not in runs  # a skipped step never started a run
    assert "ValueError" in runs["flaky"].data.tags["rto.error"]
    failed = next(e for e in events if e["event"] == "step_failed")
    assert "Traceback" in failed["traceback"] and "flaky.py" in failed["traceback"]  # the user's own traceback


def test_listed_exception_is_retried_with_backoff_then_succeeds(local_ray, tmp_path):
    prepared, events = _flaky(
        tmp_path,
        params={"error": "ConnectionError", "failing_attempts": 2},
        retries={"max": 3, "backoff_s": 0.1, "on": ["ConnectionError"]},
    )
    state = execute(prepared, on_event=events.append)
    assert state.status is Status.SUCCEEDED
    assert state.steps["flaky"].attempts == 3 and state.steps["flaky"].metrics["attempts_needed"] == 3
    assert state.steps["after"].metrics["final"] == 20
    retries = [e for e in events if e["event"] == "step_retrying"]
    assert [e["attempt"] for e in retries] == [1, 2]
    recorded = RunStore(Storage(prepared.config.storage)).events(state.run_id)  # events.jsonl, as stored
    for retry in retries:
        assert 0.08 <= retry["delay_s"] <= 0.12 * 2 ** (retry["attempt"] - 1) * 1.01  # 0.1 s, doubling, ±20 % jitter
        next_start = next(
            e
            for e in recorded
            if e["event"] == "step_started" and e.get("step") == "flaky" and e["attempt"] == retry["attempt"] + 1
        )
        logged = next(e for e in recorded if e["event"] == "step_retrying" and e["attempt"] == retry["attempt"])
        assert next_start["ts"] - logged["ts"] >= retry["delay_s"] * 0.95  # the backoff was waited out
    client = MlflowClient(prepared.config.mlflow.tracking_uri)
    attempts = client.search_runs([state.mlflow["experiment_id"]], "tags.`rto.step` = 'flaky'")
    assert sorted((r.data.tags["rto.attempt"], r.info.status) for r in attempts) == [
        ("1", "FAILED"),
        ("2", "FAILED"),
        ("3", "FINISHED"),
    ]


# --- the step cache ----------------------------------------------------------------------------


def test_unchanged_rerun_reuses_every_step(digits, digits_dir):
    cold, _, _ = digits
    state = execute(prepare("configs/digits.yaml", isolated(digits_dir)), on_event=lambda record: None)
    assert {name: s.status for name, s in state.steps.items()} == dict.fromkeys(cold.steps, Status.CACHED)
    assert state.steps["evaluate"].metrics == cold.steps["evaluate"].metrics  # the stored result, not a new one
    client = MlflowClient(state.mlflow["tracking_uri"])
    runs = _runs(client, state)
    assert runs["train"].data.tags["rto.cached"] == "true" and runs["train"].info.status == "FINISHED"


def test_an_unchanged_rerun_of_rto_run_imports_neither_the_pipeline_nor_torch_ray_or_mlflow(digits, digits_dir):
    cold, prepared, _ = digits
    sets = [a for s in isolated(digits_dir) for a in ("--set", s)]
    command = [sys.executable, "-X", "importtime", "-m", "raytrain_orch", "run", "configs/digits.yaml", *sets]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time")}
    assert not {"jobs.digits", "torch", "ray", "mlflow"} & imported
    store = RunStore(Storage(prepared.config.storage))
    run_id = store.latest().run_id
    assert run_id in done.stdout and run_id != cold.run_id
    # Its MLflow runs are written by a process of their own, a moment after it returned.
    deadline = time.time() + 90
    while time.time() < deadline and store.load(run_id).steps["register"].mlflow_run_id is None:
        time.sleep(0.5)
    state = store.load(run_id)
    assert {name: s.status for name, s in state.steps.items()} == dict.fromkeys(cold.steps, Status.CACHED)
    runs = _runs(MlflowClient(prepared.config.mlflow.tracking_uri), state)
    parent = runs.pop("pipeline")
    assert parent.info.run_id == state.mlflow["run_id"] and parent.info.status == "FINISHED"
    for step, run in runs.items():
        assert run.info.run_id == state.steps[step].mlflow_run_id and run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.data.tags["rto.cached"] == "true"
    assert runs["evaluate"].data.metrics["test_accuracy"] == cold.steps["evaluate"].metrics["test_accuracy"]


def test_changing_one_param_reruns_that_step_and_downstream_only(digits, digits_dir):
    overrides = [*isolated(digits_dir), "train.params.lr=0.04", "train.params.epochs=3"]
    state = execute(prepare("configs/digits.yaml", overrides), on_event=lambda record: None)
    statuses = {name: s.status for name, s in state.steps.items()}
    assert statuses == {
        "prepare": Status.CACHED,
        "train": Status.SUCCEEDED,
        "evaluate": Status.SUCCEEDED,
        "register": Status.SUCCEEDED,
    }


def test_a_bug_in_a_train_loop_fails_the_step_at_once_without_ray_train_retries(local_ray, tmp_path):
    path = write_config(
        tmp_path,
        "bad-train",
        "tests.pipelines.bad_train:pipeline",
        {"train": {"scaling": {"num_workers": 2}, "failure": {"max_failures": 3}, "params": {"fail_at_epoch": 1}}},
    )
    events: list[dict] = []
    with pytest.raises(PipelineFailedError, match="ValueError: bad shape at epoch 1"):
        execute(prepare(path), on_event=events.append)
    state = RunStore(Storage(prepare(path).config.storage)).latest()
    assert state.steps["train"].status is Status.FAILED and state.steps["train"].attempts == 1
    assert [e["event"] for e in events].count("restored") == 0  # Ray Train never restarted the worker group
    failed = next(e for e in events if e["event"] == "step_failed")
    assert failed["kind"] == "user" and "bad_train.py" in failed["traceback"]


# --- secrets -----------------------------------------------------------------------------------


def test_a_secret_param_reaches_its_step_but_never_mlflow_or_the_run_logs(local_ray, tmp_path):
    token = "tok-5f1e9c0a7b"
    path = write_config(
        tmp_path, "secretive", "tests.pipelines.secretive:pipeline", {"fetch": {"params": {"api_token": token}}}
    )
    state = execute(prepare(path), on_event=lambda record: None)

    assert state.steps["fetch"].metrics["token_length"] == len(token)  # the step itself got the real value
    client = MlflowClient(state.mlflow["tracking_uri"])
    runs = _runs(client, state)
    assert runs["pipeline"].data.params["steps.fetch.params.api_token"] == "***"
    assert runs["fetch"].data.params == {"api_token": "***", "rows": "10"}
    for run in runs.values():
        for artifact in ("config.yaml", "plan.json"):
            if artifact in [a.path for a in client.list_artifacts(run.info.run_id)]:
                assert (
                    token not in Path(client.download_artifacts(run.info.run_id, artifact, str(tmp_path))).read_text()
                )
    run_dir = tmp_path / "rto-runs" / "runs" / state.run_id
    for shown in ("events.jsonl", "plan.json", "state.json", "logs/fetch/attempt-1.log"):
        assert token not in (run_dir / shown).read_text(), shown
    assert (
        "fetching 10 rows with token ***" in (run_dir / "logs/fetch/attempt-1.log").read_text()
    )  # the step printed it: masked
    assert token in (run_dir / "config.yaml").read_text()  # the run's own record, which `rto resume` runs from


def test_efficiency_is_what_the_gang_used_of_what_it_reserved(local_ray, tmp_path):
    """On 2 reserved CPUs each: a step that sleeps uses almost none, one computing on both nearly all."""
    steps = {
        name: {"resources": {"CPU": 2}, "params": {"seconds": seconds}} for name, seconds in (("idle", 4), ("busy", 8))
    }
    prepared = prepare(write_config(tmp_path, "usage", "tests.pipelines.usage:pipeline", steps))
    state = execute(prepared, on_event=lambda record: None)
    assert state.status is Status.SUCCEEDED
    store = RunStore(Storage(prepared.config.storage))
    report = cli_report.load(store, store.load(state.run_id)).to_dict()
    cpu = {s["name"]: s["utilisation"]["CPU"] for s in report["steps"]}
    print(f"\nCPU efficiency: idle {cpu['idle']['efficiency']:.1%}, busy {cpu['busy']['efficiency']:.1%}")
    assert cpu["idle"]["measured"] and cpu["idle"]["efficiency"] <= 0.10, cpu["idle"]
    assert cpu["busy"]["measured"] and cpu["busy"]["efficiency"] >= 0.70, cpu["busy"]
    held = next(s for s in report["steps"] if s["name"] == "busy")["rows"][0]["held_s"]
    assert cpu["busy"]["reserved_s"] == pytest.approx(
        2 * held, abs=0.01
    )  # both reserved CPUs, for as long as it held them
