"""The alert rules of ``core.alerts``, record by record: which events a webhook is told of, which
hooks hear each, when a long wait is told, and the message each becomes. Pure: no clock, no I/O."""

from __future__ import annotations

import json

from raytrain_orch.core.alerts import Alert, Alerts, Delivery, Links, message
from raytrain_orch.core.config import NotifyConfig
from raytrain_orch.core.events import Event, make

URL = "https://hooks.example.com/T000/B000/SeCrEtToKeN"


def hook(**options) -> NotifyConfig:
    return NotifyConfig(url=URL, **options)


def record(event: str, ts: float = 0.0, **fields) -> dict:
    return {**make(Event(event), **fields), "ts": ts, "run_id": "r1"}


def started(ts: float = 0.0, experiment_id=None, mlflow_run_id=None) -> dict:
    return record("run_started", ts, experiment_id=experiment_id, mlflow_run_id=mlflow_run_id)


def step_started(step: str, attempt: int = 1, ts: float = 1.0) -> dict:
    return record(
        "step_started",
        ts,
        step=step,
        attempt=attempt,
        kind="task",
        gang="1×CPU",
        total_epochs=None,
        max_attempts=3,
    )


def succeeded(step: str, attempt: int = 1, ts: float = 2.0) -> dict:
    return record("step_succeeded", ts, step=step, attempt=attempt, metrics={}, duration_s=1.0)


def retrying(step: str, error: str, attempt: int = 1) -> dict:
    return record("step_retrying", 1.5, step=step, attempt=attempt, error=error, kind="infra", delay_s=0.01)


def failed(step: str, error: str) -> dict:
    return record(
        "step_failed", 3.0, step=step, attempt=1, error=error, kind="user", reason="the step's own code", traceback="…"
    )


def finished(status: str, duration_s: float = 12.3) -> dict:
    return record("run_finished", 20.0, status=status, duration_s=duration_s)


def waiting(step: str, ts: float, attempt: int = 1) -> dict:
    return record("step_waiting", ts, step=step, attempt=attempt, reason="waiting for 4 GPU", position=2)


def fed(alerts: Alerts, *records: dict) -> list[Delivery]:
    return [delivery for r in records for delivery in alerts.consume(r)]


def alerts_of(*records: dict, **options) -> list[Alert]:
    return [d.alert for d in fed(Alerts([hook(**options)], "digits"), *records)]


def test_a_failed_run_is_told_with_its_failed_step_and_the_first_line_of_its_error():
    told = alerts_of(
        started(),
        step_started("source"),
        succeeded("source"),
        step_started("right"),
        failed("right", "ValueError: bad column\n  (the rest of a long message)"),
        record("step_skipped", 3.1, step="join", reason="right failed"),
        finished("FAILED"),
    )

    assert told == [
        Alert(
            "failed",
            run_id="r1",
            step="right",
            cause="right failed: ValueError: bad column",
            ts=20.0,
            status="FAILED",
            pipeline="digits",
        )
    ]


def test_a_run_that_ends_otherwise_is_finished_with_its_status():
    (succeeded_run,) = alerts_of(started(), step_started("a"), succeeded("a"), finished("SUCCEEDED"))
    (killed_run,) = alerts_of(
        started(), step_started("train"), record("step_killed", 5.0, step="train", attempt=1), finished("KILLED", 5.0)
    )

    assert (succeeded_run.kind, succeeded_run.status, succeeded_run.step) == ("finished", "SUCCEEDED", None)
    assert succeeded_run.cause == "run SUCCEEDED after 12.3 s"
    assert (killed_run.kind, killed_run.cause) == ("finished", "run KILLED after 5.0 s; killed: train")


def test_a_step_that_succeeds_after_a_failed_attempt_has_recovered():
    told = alerts_of(
        started(),
        step_started("train"),
        retrying("train", "ConnectionError: reset by peer\nTraceback …"),
        step_started("train", attempt=2),
        retrying("train", "OSError: a later error", attempt=2),
        step_started("train", attempt=3),
        succeeded("train", attempt=3),
        step_started("evaluate"),
        succeeded("evaluate"),  # never failed: nothing to tell
    )

    assert [(a.kind, a.step, a.cause) for a in told] == [
        ("recovered", "train", "train succeeded at attempt 3 after: ConnectionError: reset by peer")
    ]


def test_a_step_whose_workers_restarted_after_a_fault_has_recovered_but_not_after_growing():
    restarted = record("workers_restarting", 2.0, step="train", attempt=1, phase="RESTARTING", reason="worker 1 died")
    grown = record("workers_restarting", 2.0, step="grow", attempt=1, phase="RESIZING", reason="capacity for 4 workers")

    told = alerts_of(started(), step_started("train"), restarted, succeeded("train"), grown, succeeded("grow"))

    assert [(a.kind, a.cause) for a in told] == [("recovered", "train succeeded at attempt 1 after: worker 1 died")]


def test_a_step_that_fails_after_its_retries_is_no_recovery():
    told = alerts_of(started(), step_started("a"), retrying("a", "OSError: disk"), failed("a", "OSError: disk"))

    assert told == []


def test_a_hung_step_is_told_with_its_reason():
    hung = record(
        "step_hung",
        7.0,
        step="train",
        attempt=2,
        idle_s=650.0,
        limit_s=600.0,
        reason="no progress for 650 s (limit 600 s: hang_timeout_s)",
        stacks="rto logs r1 --step train --attempt 2",
        processes=3,
        detected_ts=7.0,
    )

    (told,) = alerts_of(started(), hung)

    assert (told.kind, told.step, told.ts) == ("hung", "train", 7.0)
    assert told.cause == "train hung at attempt 2: no progress for 650 s (limit 600 s: hang_timeout_s)"


def test_a_preempted_step_is_told_by_whom_and_from_which_epoch():
    preempted = record(
        "step_preempted", 8.0, step="train", attempt=1, by="r2/tune", priority=10, queue="prod", keep=0, epoch=4
    )

    (told,) = alerts_of(started(), step_started("train"), preempted)

    assert told.kind == "preempted"
    assert told.cause == "train preempted by r2/tune (priority 10, queue prod); waiting to resume from epoch 4"


def test_each_alert_goes_only_to_the_hooks_whose_on_lists_it():
    alerts = Alerts([hook(on=["failed"]), hook(on=["recovered", "finished"]), hook()])

    deliveries = fed(
        alerts,
        started(),
        step_started("a"),
        retrying("a", "OSError: disk"),
        step_started("a", attempt=2),
        succeeded("a", attempt=2),
        finished("SUCCEEDED"),
    )

    assert [(d.hook, d.alert.kind) for d in deliveries] == [
        (1, "recovered"),
        (2, "recovered"),
        (1, "finished"),
        (2, "finished"),
    ]


def test_a_long_wait_for_a_gang_is_told_once_per_attempt_after_waiting_after_s_and_not_before():
    alerts = Alerts([hook(on=["waiting"], waiting_after_s=60), hook(on=["failed"]), hook(waiting_after_s=120)])
    fed(alerts, started(), step_started("train", ts=100.0), waiting("train", ts=100.0), waiting("train", ts=130.0))

    assert alerts.tick(159.9) == []
    (first,) = alerts.tick(160.0)  # 60 s since it began waiting (told again as it moved up: still since 100)
    assert alerts.tick(200.0) == []  # once for this attempt
    (second,) = alerts.tick(220.0)  # the third hook's own threshold

    assert (first.hook, second.hook) == (0, 2)
    assert first.alert == Alert(
        "waiting",
        run_id="r1",
        step="train",
        cause="train has waited 1 min for its gang at attempt 1: waiting for 4 GPU · queue position 2",
        ts=160.0,
    )
    preempted = record(
        "step_preempted", 300.0, step="train", attempt=1, by="r2/x", priority=1, queue="q", keep=0, epoch=0
    )
    fed(alerts, record("step_admitted", 230.0, step="train", attempt=1, waited_s=130.0), preempted)
    assert [(d.hook, d.alert.cause.split(":")[0]) for d in alerts.tick(360.0)] == [
        (0, "train has waited 1 min for its gang at attempt 2")  # its next attempt waits: told again
    ]


def test_a_step_admitted_in_time_or_a_run_that_ended_is_never_told_of_waiting():
    alerts = Alerts([hook(waiting_after_s=60)])
    fed(alerts, started(), step_started("a", ts=0.0), waiting("a", ts=0.0))
    fed(alerts, record("step_admitted", 30.0, step="a", attempt=1, waited_s=30.0))
    fed(alerts, step_started("b", ts=40.0), waiting("b", ts=40.0))

    assert alerts.tick(90.0) == []  # a was admitted; b has waited 50 s
    fed(alerts, finished("KILLED"))
    assert alerts.tick(1000.0) == []


def test_the_message_is_one_line_of_text_and_its_fields_at_the_top_level():
    (told,) = alerts_of(
        started(experiment_id="7", mlflow_run_id="abc123"),
        step_started("right"),
        failed("right", "ValueError: x"),
        finished("FAILED"),
    )
    body = message(told, Links("s3://bucket/rto", "https://mlflow.example.com/"))

    page = "https://mlflow.example.com/#/experiments/7/runs/abc123"
    assert body == {
        "text": f"[rto] failed: digits run r1: right failed: ValueError: x · `rto status r1 --storage s3://bucket/rto` "
        f"· MLflow: {page}",
        "alert": "failed",
        "run_id": "r1",
        "pipeline": "digits",
        "step": "right",
        "cause": "right failed: ValueError: x",
        "status": "FAILED",
        "ts": 20.0,
        "status_command": "rto status r1 --storage s3://bucket/rto",
        "mlflow_url": page,
    }
    assert "\n" not in body["text"]
    json.dumps(body)  # the body POSTed as it is


def test_the_mlflow_link_uses_ids_known_after_the_start_and_is_none_while_unknown():
    (told,) = alerts_of(started(), finished("SUCCEEDED"))  # MLflow's ids not created yet when the run started
    known: dict[str, dict] = {}
    links = Links("/data/rto runs", "sqlite:////data/mlflow.db", lambda run_id: known.get(run_id, {}))

    before = message(told, links)
    known["r1"] = {"experiment_id": "3", "run_id": "f00"}
    after = message(told, links)

    assert before["mlflow_url"] is None and "MLflow" not in before["text"]
    assert before["status_command"] == "rto status r1 --storage '/data/rto runs'"
    assert after["mlflow_url"] == "http://127.0.0.1:5000/#/experiments/3/runs/f00"  # where `rto ui` serves sqlite


def test_the_webhook_url_appears_in_no_alert_and_no_message():
    alerts = Alerts([hook(waiting_after_s=1)], "digits")
    deliveries = fed(alerts, started(), step_started("a"), waiting("a", 1.0)) + alerts.tick(10.0)
    deliveries += fed(
        alerts,
        retrying("a", "OSError: disk"),
        step_started("a", attempt=2),
        succeeded("a", attempt=2),
        failed("b", "ValueError: x"),
        finished("FAILED"),
    )
    shown = [repr(d) for d in deliveries] + [json.dumps(message(d.alert, Links("/r"))) for d in deliveries]

    assert [d.alert.kind for d in deliveries] == ["waiting", "recovered", "failed"]
    assert not any("hooks.example.com" in text or "SeCrEtToKeN" in text for text in shown)
