"""Which runs ``rto gc`` collects: the selectors and what is never collected, as plain data."""

from __future__ import annotations

import pytest

from raytrain_orch.core.errors import ConfigError
from raytrain_orch.store.retention import DAY_S, BestMetric, RetentionRule, decide
from raytrain_orch.store.state import RunState, Status, StepState

NOW = 1_000 * DAY_S


def run(run_id: str, days_ago: float, pipeline: str = "digits", status: Status = Status.SUCCEEDED, **metrics):
    """A run that started and ended ``days_ago`` days before NOW; its evaluate step's metrics."""
    at = NOW - days_ago * DAY_S
    steps = {"train": StepState(metrics={"loss": 0.5}), "evaluate": StepState(metrics=metrics)}
    return RunState(
        run_id=run_id,
        name=pipeline,
        pipeline=pipeline,
        config_hash="h",
        status=status,
        created_at=at,
        ended_at=at if status.terminal else None,
        steps=steps,
    )


def test_keep_last_keeps_the_newest_of_each_pipeline():
    runs = [run("d1", 3), run("d2", 2), run("d3", 1), run("m1", 5, pipeline="mnist"), run("m2", 4, pipeline="mnist")]

    decision = decide(runs, RetentionRule(keep_last=2), NOW)

    assert decision.collect == ("d1",)
    assert set(decision.kept) == {"d2", "d3", "m1", "m2"}
    assert decision.kept["d3"] == "one of the 2 newest of digits"


def test_keep_last_counts_finished_runs_only():
    runs = [run("old", 3), run("done", 2), run("running", 1, status=Status.RUNNING)]

    decision = decide(runs, RetentionRule(keep_last=1), NOW)

    assert decision.collect == ("old",)
    assert decision.kept == {"running": "not finished (RUNNING)", "done": "one of the 1 newest of digits"}


def test_older_than_collects_only_runs_that_ended_before():
    runs = [run("week", 7), run("yesterday", 1), run("hour", 1 / 24)]

    decision = decide(runs, RetentionRule(older_than_days=2), NOW)

    assert decision.collect == ("week",)
    assert decision.kept["yesterday"] == "ended less than 2 days ago"


def test_keep_best_keeps_each_pipelines_best_run():
    runs = [
        run("d1", 3, test_accuracy=0.91),
        run("d2", 2, test_accuracy=0.97),
        run("d3", 1, test_accuracy=0.93),
        run("m1", 1, pipeline="mnist", test_accuracy=0.5),
        run("no-metric", 4),
    ]

    decision = decide(runs, RetentionRule(keep_best=BestMetric.parse("evaluate.test_accuracy")), NOW)

    assert set(decision.collect) == {"d1", "d3", "no-metric"}
    assert decision.kept == {
        "d2": "the best of digits by max:evaluate.test_accuracy",
        "m1": "the best of mnist by max:evaluate.test_accuracy",
    }


def test_keep_best_min_keeps_the_lowest_and_the_newest_of_equals():
    runs = [run("a", 3, val_loss=0.2), run("b", 2, val_loss=0.1), run("c", 1, val_loss=0.1)]

    decision = decide(runs, RetentionRule(keep_best=BestMetric.parse("min:val_loss")), NOW)

    assert set(decision.kept) == {"c"}


def test_selectors_together_keep_what_any_of_them_keeps():
    runs = [run("best-old", 30, acc=0.99), run("old", 20, acc=0.5), run("recent", 1, acc=0.6), run("newest", 0.5)]

    rule = RetentionRule(keep_last=1, older_than_days=7, keep_best=BestMetric.parse("acc"))
    decision = decide(runs, rule, NOW)

    assert decision.collect == ("old",)


def test_protected_and_unfinished_runs_are_never_collected():
    runs = [
        run("pinned", 9),
        run("registered", 8),
        run("waiting", 7, status=Status.WAITING),
        run("pending", 6, status=Status.PENDING),
        run("plain", 5),
    ]

    decision = decide(runs, RetentionRule(keep_last=0), NOW, {"pinned": "pinned", "registered": "model m version 1"})

    assert decision.collect == ("plain",)
    assert decision.kept["registered"] == "model m version 1"
    assert decision.kept["waiting"] == "not finished (WAITING)"


@pytest.mark.parametrize(
    ("text", "metric", "step", "mode"),
    [
        ("test_accuracy", "test_accuracy", None, "max"),
        ("evaluate.test_accuracy", "test_accuracy", "evaluate", "max"),
        ("min:train.val_loss", "val_loss", "train", "min"),
        ("max:acc", "acc", None, "max"),
    ],
)
def test_best_metric_syntax(text, metric, step, mode):
    assert BestMetric.parse(text) == BestMetric(metric=metric, step=step, mode=mode)


def test_a_dotted_metric_name_that_is_no_step_is_read_whole():
    state = run("r", 1)
    state.steps["evaluate"].metrics["top.1"] = 0.8

    assert BestMetric.parse("top.1").value(state) == 0.8
    assert BestMetric.parse("loss").value(state) == 0.5  # the last step that has it


@pytest.mark.parametrize("text", ["lowest:loss", "min:", ""])
def test_a_bad_metric_is_a_usage_error(text):
    with pytest.raises(ConfigError, match="--keep-best"):
        BestMetric.parse(text)


def test_no_selector_is_a_usage_error_naming_them():
    with pytest.raises(ConfigError, match="--keep-last N, --older-than DAYS or --keep-best METRIC"):
        RetentionRule()
