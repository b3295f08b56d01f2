"""The run report's logic on synthetic event records (``core/report.py``): every step's parts add up
to its wall time; work redone after a restore, a failure's recovery, a retry's delay and a hung tail
are counted as lost; reserved against used, and what that cost at a ``cost:`` price table; a GPU
without NVML is "not measured", never 0 %; the critical path and the one change worth making; the
text ``rto report`` prints, and the command itself on a run the driver recorded."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from raytrain_orch.cli.main import main
from raytrain_orch.core import report_text
from raytrain_orch.core.config import parse_config
from raytrain_orch.core.errors import ConfigError
from raytrain_orch.core.plan import build_plan
from raytrain_orch.core.redact import redact, secret_values
from raytrain_orch.core.report import build
from raytrain_orch.engine import driver
from raytrain_orch.tracking import report_files
from tests.fakes import FakeBackend, InfraFault
from tests.pipelines.diamond import pipeline

from .test_driver import FakeCompute, FakeTracking
from .test_runner import config
from .test_timeline import Run

T = 1000.0


def built(run: Run, prices: dict[str, float] | None = None) -> Any:
    end = max(r["ts"] for r in run.records) + 1.0
    records = sorted([*run.records, {"event": "run_finished", "ts": end, "status": "SUCCEEDED"}], key=lambda r: r["ts"])
    return build(records, {"steps": run.steps}, prices)


def parts(row_or_step: Any) -> dict[str, float]:
    return {k: round(v, 6) for k, v in row_or_step.parts().items() if v}


def usage(run: Run, step: str, at: float, since: float, cpu_s: float, attempt: int = 1, **fields: Any) -> None:
    sample = {"host": "h", "pid": 7, "since": since, "cpu_s": cpu_s, "final": True, **fields}
    run.add("usage", at, sent_ts=at, step=step, attempt=attempt, **sample)


def test_a_task_attempt_is_cut_into_wait_startup_work_and_teardown_that_add_up_to_its_wall_time():
    run = Run()
    run.declare("load")
    run.task("load", T + 1)  # admitted 0.5 s in, code from 1 s to 2.5 s, ended at 3 s

    step = built(run).step("load")

    assert step.state == "succeeded" and step.wall_s == pytest.approx(3.0)
    assert parts(step) == {"wait": 0.5, "startup": 0.5, "work": 1.5, "teardown": 0.5}
    assert step.rows[0].unaccounted_s == pytest.approx(0.0)


def test_epochs_redone_after_a_restore_and_the_recovery_before_them_count_as_restart():
    run = Run()
    run.declare("train", "train")
    run.add("step_started", T, step="train", attempt=1)
    run.add("step_admitted", T + 1, step="train", attempt=1)
    run.epoch("train", 1, T + 5, 0)  # each epoch: 2.5 s of work, 0.5 s reporting its checkpoint
    run.epoch("train", 1, T + 8, 1)
    run.add("workers_restarting", T + 9, sent_ts=T + 9, step="train", attempt=1, reason="worker 1 died")
    run.add("restored", T + 10, sent_ts=T + 10, step="train", attempt=1, epoch=0)
    run.epoch("train", 1, T + 14, 1)  # epoch 1 again: its work was lost with the worker
    run.epoch("train", 1, T + 17, 2)
    run.add("step_succeeded", T + 18, step="train", attempt=1)

    report = built(run)
    (row,) = report.step("train").rows

    # 1 s start-up, then 3 epochs' work and reports; from the last good epoch to the redone one's
    # start (T+8 → T+11) recovery, and the redone epoch itself (3 s), lost
    assert parts(row) == {"wait": 1.0, "startup": 1.0, "work": 7.5, "checkpoint": 1.5, "restart": 6.0, "teardown": 1}
    assert row.unaccounted_s == pytest.approx(0.0)
    redone = [s for s in row.spans if s.label == "epoch 1 (redone)"]
    assert [(s.kind, s.start, s.end) for s in redone] == [("restart", T + 11, T + 13.5)]
    assert ("restart", T + 9) in [(kind, at) for kind, at, _ in row.marks]
    assert report.to_dict()["advice"]["part"] == "restart"


def test_a_retried_attempts_unfinished_tail_and_the_delay_before_the_retry_are_lost():
    run = Run()
    run.declare("fetch")
    run.add("step_started", T, step="fetch", attempt=1)
    run.add("step_admitted", T + 1, step="fetch", attempt=1)
    usage(run, "fetch", T + 2, since=T + 1.5, cpu_s=0.2, final=False)  # sampled, then killed
    run.add("step_retrying", T + 4, step="fetch", attempt=1, error="ConnectionError: reset\nTraceback …")
    run.add("step_started", T + 6, step="fetch", attempt=2)
    run.add("step_admitted", T + 6, step="fetch", attempt=2)
    usage(run, "fetch", T + 8, since=T + 6.5, cpu_s=1.0, attempt=2)
    run.add("step_succeeded", T + 8.5, step="fetch", attempt=2)

    step = built(run).step("fetch")

    first, second = step.rows
    assert parts(first) == {"wait": 1.0, "startup": 0.5, "restart": 2.5}
    assert [(g.kind, g.start, g.end) for g in step.gaps] == [("restart", T + 4, T + 6)]
    assert parts(second) == {"startup": 0.5, "work": 1.5, "teardown": 0.5}
    assert parts(step) == {"wait": 1.0, "startup": 1.0, "work": 1.5, "restart": 4.5, "teardown": 0.5}
    assert sum(step.parts().values()) == pytest.approx(step.wall_s)
    assert ("failed", T + 4, "ConnectionError: reset") in first.marks


def test_a_hung_attempt_counts_from_its_last_progress_to_its_end_as_hang():
    run = Run()
    run.declare("train", "train")
    run.add("step_started", T, step="train", attempt=1)
    run.add("step_admitted", T + 1, step="train", attempt=1)
    run.epoch("train", 1, T + 5, 0)
    run.add("step_hung", T + 65, step="train", attempt=1, detected_ts=T + 65, idle_s=60.0)
    run.add("step_failed", T + 66, step="train", attempt=1, error="StepHungError: no progress for 60 s")

    report = built(run)
    step = report.step("train")

    assert step.state == "failed"
    assert parts(step) == {"wait": 1.0, "startup": 1.0, "work": 2.5, "checkpoint": 0.5, "hang": 61.0}
    assert ("hang", T + 65) in [(kind, at) for kind, at, _ in step.rows[0].marks]
    assert report.advice()["part"] == "hang" and "hang_timeout_s" in report.advice()["text"]


def test_a_hung_task_loses_the_work_before_its_last_sign_of_life_and_hangs_after_it():
    run = Run()
    run.declare("fetch")
    run.add("step_started", T, step="fetch", attempt=1)
    run.add("step_admitted", T, step="fetch", attempt=1)
    usage(run, "fetch", T + 1, since=T + 0.5, cpu_s=0.1, final=False)
    run.add("step_hung", T + 40, step="fetch", attempt=1, detected_ts=T + 40, idle_s=30.0)
    usage(run, "fetch", T + 40.5, since=T + 0.5, cpu_s=0.1)  # its last sample, sent as it is ended
    run.add("step_failed", T + 41, step="fetch", attempt=1, error="StepHungError")

    assert parts(built(run).step("fetch")) == {"startup": 0.5, "restart": 9.5, "hang": 31.0}


def test_a_task_hung_before_its_first_sample_hangs_from_its_last_sign_of_life():
    run = Run()
    run.declare("prepare")
    run.add("step_started", T, step="prepare", attempt=1)
    run.add("step_admitted", T + 2, step="prepare", attempt=1)
    run.add("step_hung", T + 7.5, step="prepare", attempt=1, detected_ts=T + 7.5, idle_s=3.5)  # code from T+4
    run.add("step_retrying", T + 8, step="prepare", attempt=1, error="StepHung: no progress for 3.5 s")

    (row,) = built(run).step("prepare").rows

    assert parts(row) == {"wait": 2.0, "startup": 2.0, "hang": 4.0}


def test_a_sweep_shows_each_trial_with_its_own_wait_and_its_time_is_its_trials():
    run = Run()
    run.declare("search", "sweep")
    run.sweep("search", T, trials=3)

    step = built(run).step("search")

    assert step.kind == "sweep" and [row.kind for row in step.rows] == ["sweep", "trial", "trial", "trial"]
    trial = step.rows[1]
    assert trial.outcome == "finished" and parts(trial)["wait"] == 0.5 and trial.held_s == pytest.approx(4.0)
    assert parts(step) == {"startup": 1.0, "work": pytest.approx(4.52), "teardown": pytest.approx(1.48)}
    assert step.gang_rows() == step.rows[1:]  # the sweep itself holds no gang: its trials do


def test_reserved_against_used_and_the_cost_at_a_price_table_add_up():
    run = Run()
    run.declare("prep")
    run.steps[-1]["gang"] = {"bundles": [{"CPU": 2.0}]}
    run.add("step_started", T, step="prep", attempt=1)
    run.add("step_admitted", T, step="prep", attempt=1)
    usage(run, "prep", T + 3600, since=T, cpu_s=1800.0)
    run.add("step_succeeded", T + 3600, step="prep", attempt=1)
    run.declare("train", "task", ("prep",))
    run.steps[-1]["gang"] = {"bundles": [{"CPU": 1.0, "GPU": 1.0, "memory": 4 * 2.0**30}]}
    run.add("step_started", T + 3600, step="train", attempt=1)
    run.add("step_admitted", T + 3600, step="train", attempt=1)
    gpu = {"devices": 1.0, "busy_s": 900.0, "memory_mb": 4000.0}
    usage(run, "train", T + 5400, since=T + 3600, cpu_s=0.0, gpu=gpu)
    run.add("step_succeeded", T + 5400, step="train", attempt=1)
    run.declare("warm")
    run.add("step_cached", T, step="warm")
    prices = {"CPU": 0.04, "GPU": 2.5, "memory": 0.01}

    report = built(run, prices)

    # prep: 2 CPU × 1 h = 0.08, of it idle (7200 - 1800) CPU-s = 0.06
    # train: ½ h of 1 CPU (0.02, all idle), 1 GPU (1.25, half idle: 0.625), 4 GiB (0.02, not measured)
    cost = report.cost()
    assert cost["cost_estimate"] == pytest.approx(0.08 + 0.02 + 1.25 + 0.02)
    assert cost["idle_cost"] == pytest.approx(0.06 + 0.02 + 0.625)
    assert cost["idle_unmeasured"] == ["memory"]
    assert report_files.metrics(report) == {
        "cpu_efficiency": pytest.approx(1800 / (7200 + 1800), abs=1e-4),
        "gpu_efficiency": 0.5,
        "cost_estimate": pytest.approx(1.37),
        "idle_cost": pytest.approx(0.705),
    }
    steps = {s["name"]: s for s in report.to_dict()["steps"]}
    assert steps["prep"]["cost"]["cost_estimate"] == pytest.approx(0.08)
    assert steps["prep"]["utilisation"]["CPU"]["efficiency"] == 0.25
    assert steps["warm"]["state"] == "cached" and steps["warm"]["cost"]["cost_estimate"] == 0
    text = report_text.render(report.to_dict())
    assert "cost estimate 1.3700, of it idle reservations 0.7050" in text and "memory counted as busy" in text


def test_without_a_price_table_no_cost_is_shown():
    run = Run()
    run.declare("load")
    run.task("load", T)

    report = built(run)

    assert report.cost() is None and report.to_dict()["cost"] is None
    assert set(report_files.metrics(report)) == {"cpu_efficiency"}
    assert "cost" not in report_text.render(report.to_dict())


def test_a_gpu_without_nvml_is_not_measured_never_zero_and_a_row_with_no_sample_leaves_the_rest_measured():
    run = Run()
    run.declare("train", gpu=True)
    run.add("step_started", T, step="train", attempt=1)
    run.add("step_admitted", T, step="train", attempt=1)
    note = "no GPU measured: NVMLError_LibraryNotFound: NVML Shared Library Not Found"
    usage(run, "train", T + 10, since=T, cpu_s=5.0, gpu=None, gpu_note=note)
    run.add("step_succeeded", T + 10, step="train", attempt=1)
    run.declare("killed")  # killed before its first sample: its use is unknown, not zero
    run.add("step_started", T, step="killed", attempt=1)
    run.add("step_admitted", T, step="killed", attempt=1)
    run.add("step_failed", T + 10, step="killed", attempt=1, error="killed")

    data = built(run).to_dict()

    gpu = data["utilisation"]["GPU"]
    assert gpu["measured"] is False and gpu["efficiency"] is None and gpu["note"] == note
    cpu = data["utilisation"]["CPU"]
    assert (cpu["measured"], cpu["efficiency"], cpu["unmeasured_s"]) == (True, 0.5, 10.0)
    text = report_text.render(data)
    assert f"GPU: not measured ({note})" in text and "CPU: 50 % used" in text and "50 % of it not measured" in text
    (train_line,) = [line for line in text.splitlines() if line.startswith("train ")]
    assert train_line.split()[-3:] == ["50", "%", "n/m"]  # CPU 50 %, GPU not measured


def test_the_critical_path_follows_the_input_that_ended_last_and_the_advice_names_its_biggest_loss():
    run = Run()
    for name, inputs in (("source", ()), ("left", ("source",)), ("right", ("source",)), ("join", ("left", "right"))):
        run.declare(name, "task", inputs)
    run.task("source", T)
    run.task("left", T + 3)
    run.add("step_started", T + 3, step="right", attempt=1)
    run.add("step_admitted", T + 20, step="right", attempt=1)  # 17 s waiting for its gang
    usage(run, "right", T + 22, since=T + 20, cpu_s=2.0)
    run.add("step_succeeded", T + 22, step="right", attempt=1)
    run.task("join", T + 22)

    report = built(run)

    assert [s.name for s in report.critical_path()] == ["source", "right", "join"]
    advice = report.advice()
    assert (advice["step"], advice["part"], advice["seconds"]) == ("right", "wait", 17.0)
    data = report.to_dict()
    assert data["critical_path"]["wall_s"] == pytest.approx(3 + 19 + 3)
    assert data["critical_path"]["parts"]["wait"] == pytest.approx(0.5 + 17 + 0.5)
    text = report_text.render(data)
    assert "critical path: source → right → join" in text
    assert "biggest saving: right waited 17 s for its gang" in text


def test_the_text_folds_a_steps_rows_past_twelve_and_names_the_rest():
    run = Run()
    run.declare("score")
    run.mapped("score", T, items=20)

    text = report_text.render(built(run).to_dict())

    lines = text.splitlines()
    assert lines[0].startswith("run run-1  succeeded")
    assert sum(1 for line in lines if line.startswith("  score[")) == 11  # the mapped attempt, then 11 items
    assert "  … 9 more (rto report --json)" in lines
    header = next(line for line in lines if line.startswith("STEP"))
    assert header.split() == list(report_text._HEADER)


def test_rto_report_reads_a_recorded_run_and_writes_its_timeline(tmp_path, capsys):
    cfg = config(tmp_path).model_copy(update={"cost": {"CPU": 0.5}})
    prepared = driver.Prepared(cfg, pipeline, build_plan(cfg, pipeline))
    compute = FakeCompute([])
    compute.backend = FakeBackend({"left": [InfraFault("worker died"), None]})
    driver.execute(prepared, compute=compute, tracking=FakeTracking([]), on_event=lambda record: None, run_id="r1")
    storage = ["--storage", cfg.storage]
    capsys.readouterr()

    assert main(["report", "r1", "--json", *storage]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "succeeded" and [s["name"] for s in data["steps"]] == ["source", "left", "right", "join"]
    left = data["steps"][1]
    assert [row["outcome"] for row in left["rows"]] == ["retried", "succeeded"] and left["gaps"][0][0] == "restart"
    for step in data["steps"]:
        assert abs(step["unaccounted_s"]) <= 0.02 * step["wall_s"] + 0.01, step
    assert data["cost"]["prices"] == {"CPU": 0.5}

    assert main(["report", "--html", str(tmp_path / "out"), *storage]) == 0  # the newest run
    out = capsys.readouterr().out
    assert out.startswith("run r1  succeeded") and "timeline: " in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "report.json",
        "report.txt",
        "timeline.html",
        "timeline.png",
    ]
    page = (tmp_path / "out" / "timeline.html").read_text(encoding="utf-8")
    assert all(f'data-step="{name}"' in page for name in ("source", "left", "right", "join"))


def test_notify_accepts_its_on_key_and_a_webhook_url_is_a_secret():
    cfg = parse_config(
        "name: n\npipeline: m:p\nnotify:\n  - url: https://hooks.example.com/T000/B000/SeCrEtToKeN\n"
        "    on: [failed, waiting]\n    waiting_after_s: 60\n",
        "n.yaml",
    )

    (hook,) = cfg.notify
    assert (hook.on, hook.waiting_after_s) == (["failed", "waiting"], 60)
    shown = redact(cfg.model_dump(mode="json"))
    assert shown["notify"][0]["url"] == "https://hooks.example.com/***" and shown["notify"][0]["on"] == hook.on
    assert "https://hooks.example.com/T000/B000/SeCrEtToKeN" in secret_values(cfg.model_dump(mode="json"))
    with pytest.raises(ConfigError, match=r"notify\.0\.on\.0: Input should be 'failed', .* \(got 'sometimes'\)"):
        parse_config("name: n\npipeline: m:p\nnotify:\n  - url: https://h.example.com/x\n    on: [sometimes]\n", "n")


def test_the_report_is_made_once_and_only_its_upload_is_retried_while_mlflow_is_down():
    run = Run()
    run.declare("load")
    run.task("load", T)
    made, uploads = [], []

    def make():
        made.append(1)
        return built(run, {"CPU": 1.0})

    class Store:
        def log_artifacts(self, run_id, directory, path):
            files = sorted(p.name for p in Path(directory).iterdir())
            uploads.append((run_id, path, files))
            if len(uploads) == 1:
                raise ConnectionError("MLflow unreachable")

        def log_metrics(self, run_id, metrics):
            uploads.append((run_id, sorted(metrics)))

    log_report = report_files.logger(make, SimpleNamespace(id="parent"))
    with pytest.raises(ConnectionError):
        log_report(Store())  # the outbox retries the call (a transient error) …
    log_report(Store())  # … which uploads the files it made the first time

    files = ["report.json", "report.txt", "timeline.html", "timeline.png"]
    assert made == [1] and uploads[:2] == [("parent", "report", files)] * 2
    assert uploads[2] == ("parent", ["cost_estimate", "cpu_efficiency", "idle_cost"])
