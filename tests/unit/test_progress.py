"""What ``rto run`` shows while it runs: the plain lines (pipes, CI, job logs) and the live view
of a terminal, both driven by the run's event records."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from raytrain_orch.cli.live import LiveView, progress_view
from raytrain_orch.cli.progress import LinePrinter


def lines(*records: dict) -> list[str]:
    stream = io.StringIO()
    printer = LinePrinter(stream)
    for record in records:
        printer({"ts": 0.0, "run_id": "r", **record})
    return [line.split("  ", 1)[1] for line in stream.getvalue().splitlines()]


def test_a_waiting_step_says_why_and_then_how_long_it_waited():
    shown = lines(
        {
            "event": "step_waiting",
            "step": "train",
            "attempt": 1,
            "position": 2,
            "reason": "waiting for resources: 2 × {CPU: 1} PACK; held by r2/train",
        },
        {"event": "step_admitted", "step": "train", "attempt": 1, "waited_s": 12.34},
    )

    assert shown == [
        "train      waiting for resources: 2 × {CPU: 1} PACK; held by r2/train (queue position 2)",
        "train      admitted after waiting 12.3 s",
    ]


def test_a_step_admitted_at_once_prints_nothing_extra():
    assert lines({"event": "step_admitted", "step": "prepare", "attempt": 1, "waited_s": 0.9}) == []


def test_sweep_trials_are_named_by_number_and_end_in_a_table_with_the_best_marked():
    stream = io.StringIO()
    printer = LinePrinter(stream)
    trial = {"step": "train", "attempt": 1, "trial": "train_a1b2c_00001"}
    for record in (
        {"event": "step_started", "step": "train", "attempt": 1, "gang": "2 × {CPU: 1} PACK", "total_epochs": 4},
        {"event": "trial_started", **trial, "params": {"lr": 0.012345, "hidden": 64}},
        {"event": "epoch", **trial, "epoch": 0, "metrics": {"epoch": 0.0, "val_accuracy": 0.5}},
        {"event": "trial_stopped", **trial, "epochs": 1},
        {
            "event": "sweep_finished",
            "step": "train",
            "attempt": 1,
            "metric": "val_accuracy",
            "trials": [
                {
                    "trial": "train_a1b2c_00000",
                    "status": "finished",
                    "epochs": 4,
                    "val_accuracy": 0.95,
                    "params": {"lr": 0.1},
                    "best": True,
                },
                {
                    "trial": "train_a1b2c_00001",
                    "status": "stopped",
                    "epochs": 1,
                    "val_accuracy": 0.5,
                    "params": {"lr": 0.012345},
                    "best": False,
                },
            ],
        },
    ):
        printer({"ts": 0.0, "run_id": "r", **record})
    shown = [line[10:] for line in stream.getvalue().splitlines()]

    assert shown[1:5] == [
        "train      trial 00001 started  lr=0.01235 hidden=64",
        "train      trial 00001 epoch 1/4  val_accuracy=0.5",
        "train      trial 00001 stopped early after 1 epoch(s)",
        "train      sweep: 2 trials",
    ]
    table = [line.split() for line in shown[5:]]
    assert table == [
        ["trial", "status", "epochs", "val_accuracy", "params"],
        ["*", "00000", "finished", "4", "0.9500", "lr=0.1"],
        ["00001", "stopped", "1", "0.5000", "lr=0.01235"],
    ]


# --- the live view of a terminal ----------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def live_view(steps: dict | None = None) -> tuple[LiveView, Clock, Console]:
    """A view whose clock the test moves, printing (above its live area) to a recorded console."""
    clock = Clock()
    printed = Console(record=True, width=120, file=io.StringIO())
    return LiveView(printed, steps, clock=clock), clock, printed


def screen(view: LiveView) -> str:
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(view.render())
    return console.export_text()


def row(text: str, step: str) -> str:
    """The row of ``step`` (or trial), its cells joined by single spaces, wrapped details included,
    progress bars left out."""
    lines = text.splitlines()
    details = next((line.index("details") for line in lines if "details" in line), 0)
    at = next(i for i, line in enumerate(lines) if line.split()[:1] == [step])
    wrapped = [lines[at]]
    for line in lines[at + 1 :]:
        if not details or line[:details].strip() or not line.strip():
            break
        wrapped.append(line)
    return " ".join(" ".join(wrapped).translate({ord(c): " " for c in "━╸╺"}).split())


def send(view: LiveView, clock: Clock, **record) -> None:
    view({"ts": clock.now, "run_id": "digits-1", **record})


def test_the_live_view_follows_a_run_from_cache_hit_through_waiting_epochs_and_a_retry():
    view, clock, printed = live_view({"prepare": None, "train": None, "evaluate": None})
    train = {"step": "train"}
    send(view, clock, event="run_started")
    assert row(screen(view), "evaluate") == "evaluate pending"  # every planned step shows from the start

    send(view, clock, event="step_cached", step="prepare", cache_key="k", metrics={"n_train": 1222})
    send(
        view,
        clock,
        event="step_started",
        **train,
        attempt=1,
        kind="train",
        gang="2 × {CPU: 1} PACK",
        total_epochs=20,
        max_attempts=3,
    )
    send(
        view,
        clock,
        event="step_waiting",
        **train,
        attempt=1,
        position=2,
        reason="waiting for resources: 2 × {CPU: 1} PACK; held by r2/train",
    )
    clock.now += 3
    send(
        view,
        clock,
        event="step_waiting",
        **train,
        attempt=1,
        position=1,
        reason="waiting for resources: 2 × {CPU: 1} PACK; held by r2/train",
    )
    clock.now += 1
    text = screen(view)
    assert row(text, "prepare") == "prepare cached n_train=1222"
    assert (
        row(text, "train")
        == "train waiting epoch 0/20 4.0 s waiting for resources: 2 × {CPU: 1} PACK; held by r2/train · "
        "queue position 1"
    )

    send(view, clock, event="step_admitted", **train, attempt=1, waited_s=4.0)
    for epoch in range(3):
        clock.now += 2
        send(
            view,
            clock,
            event="epoch",
            **train,
            attempt=1,
            epoch=epoch,
            metrics={"epoch": float(epoch), "loss": 0.5 / (epoch + 1), "val_accuracy": 0.8 + epoch / 100},
            epoch_s=2.0,
            report_s=0.1,
        )
    text = screen(view)
    assert "epoch 3/20" in row(text, "train")
    assert row(text, "train").startswith("train running")
    assert row(text, "train").endswith("10.0 s loss=0.1667 val_accuracy=0.82")  # the attempt's time, its wait included

    send(
        view,
        clock,
        event="step_retrying",
        **train,
        attempt=1,
        error="RayActorError: the actor died\nmore detail",
        kind="infra",
        delay_s=2.0,
        max_attempts=3,
    )
    assert (
        row(screen(view), "train") == "train retrying 2/3 epoch 3/20 RayActorError: the actor died — retrying in 2.0 s"
    )
    assert (
        "train attempt 1 failed (infra): RayActorError: the actor died" in printed.export_text()
    )  # kept in scrollback

    send(
        view,
        clock,
        event="step_started",
        **train,
        attempt=2,
        kind="train",
        gang="2 × {CPU: 1} PACK",
        total_epochs=20,
        max_attempts=3,
    )
    send(view, clock, event="restored", **train, attempt=2, epoch=2, checkpoint="ckpt_000002")
    assert row(screen(view), "train") == "train running 2/3 epoch 3/20 0.0 s resumed after epoch 3"
    clock.now += 30
    send(view, clock, event="step_succeeded", **train, attempt=2, metrics={"val_accuracy": 0.97}, duration_s=30.5)
    send(
        view,
        clock,
        event="step_started",
        step="evaluate",
        attempt=1,
        kind="task",
        gang="1 × {CPU: 1}",
        total_epochs=None,
        max_attempts=1,
    )
    clock.now += 95
    send(
        view,
        clock,
        event="step_failed",
        step="evaluate",
        attempt=1,
        error="ValueError: no test split\nsecond line",
        kind="user",
        reason="error raised by the step's own code",
        traceback='Traceback (most recent call last):\n  File "digits.py", line 3\nValueError: no test split\n',
    )
    send(view, clock, event="run_finished", status="FAILED", duration_s=137.2)
    clock.now += 600  # the finished run's clock stands still

    text = screen(view)
    assert (
        text.splitlines()[0] == "run digits-1  failed  elapsed 2 min 15 s"
    )  # from the view's start (Ray's start included) to the end
    assert row(text, "train").startswith("train done")
    assert row(text, "train").endswith("30.5 s val_accuracy=0.97")
    assert row(text, "evaluate") == "evaluate failed 1 min 35 s ValueError: no test split"
    scrollback = printed.export_text()
    assert "evaluate FAILED on attempt 1: ValueError: no test split" in scrollback
    assert 'File "digits.py", line 3' in scrollback  # the traceback, as it was


def test_a_retry_without_max_attempts_names_the_attempt():
    view, clock, _ = live_view()
    send(
        view, clock, event="step_retrying", step="prepare", attempt=1, error="OSError: disk", kind="infra", delay_s=1.0
    )

    assert row(screen(view), "prepare").startswith("prepare retrying (attempt 2) OSError: disk")


def test_a_sweep_shows_each_trial_with_epochs_metric_and_params_and_the_best_at_the_end():
    view, clock, _ = live_view({"train": "val_accuracy"})
    trial = {"step": "train", "attempt": 1}
    send(
        view,
        clock,
        event="step_started",
        **trial,
        kind="train",
        gang="2 × {CPU: 1} PACK",
        total_epochs=4,
        max_attempts=1,
    )
    for number, lr in enumerate((0.1, 0.01, 0.001)):
        send(
            view,
            clock,
            event="trial_started",
            **trial,
            trial=f"train_a1b2c_0000{number}",
            params={"lr": lr, "hidden": 64},
        )
    send(
        view,
        clock,
        event="epoch",
        **trial,
        trial="train_a1b2c_00000",
        epoch=1,
        metrics={"epoch": 1.0, "val_accuracy": 0.91},
    )
    send(
        view,
        clock,
        event="epoch",
        **trial,
        trial="train_a1b2c_00001",
        epoch=0,
        metrics={"epoch": 0.0, "val_accuracy": 0.5},
    )
    send(view, clock, event="trial_stopped", **trial, trial="train_a1b2c_00001", epochs=1)

    text = screen(view)
    assert row(text, "train") == "train running 0.0 s 3 trials: 2 running, 1 stopped"
    assert row(text, "00000") == "00000 running 2/4 0.9100 lr=0.1 hidden=64"
    assert row(text, "00001") == "00001 stopped 1/4 0.5000 lr=0.01 hidden=64"
    assert row(text, "00002") == "00002 running 0/4 - lr=0.001 hidden=64"

    send(
        view,
        clock,
        event="trial_finished",
        **trial,
        trial="train_a1b2c_00000",
        metrics={"epoch": 3.0, "val_accuracy": 0.95},
    )
    send(
        view,
        clock,
        event="sweep_finished",
        **trial,
        metric="val_accuracy",
        trials=[
            {
                "trial": "train_a1b2c_00000",
                "status": "finished",
                "epochs": 4,
                "val_accuracy": 0.95,
                "params": {"lr": 0.1, "hidden": 64},
                "best": True,
            },
            {
                "trial": "train_a1b2c_00001",
                "status": "stopped",
                "epochs": 1,
                "val_accuracy": 0.5,
                "params": {"lr": 0.01, "hidden": 64},
                "best": False,
            },
            {
                "trial": "train_a1b2c_00002",
                "status": "finished",
                "epochs": 4,
                "val_accuracy": 0.93,
                "params": {"lr": 0.001, "hidden": 64},
                "best": False,
            },
        ],
    )
    text = screen(view)
    assert "train sweep: 3 trials: 2 finished, 1 stopped" in text
    assert row(text, "*") == "* 00000 finished 4/4 0.9500 lr=0.1 hidden=64"
    assert row(text, "00002") == "00002 finished 4/4 0.9300 lr=0.001 hidden=64"


def test_skipped_and_killed_steps_say_so():
    view, clock, _ = live_view({"evaluate": None, "register": None})
    send(view, clock, event="step_started", step="evaluate", attempt=1, kind="task", gang="1 × {CPU: 1}")
    clock.now += 3
    send(view, clock, event="step_killed", step="evaluate", attempt=1)
    send(view, clock, event="step_skipped", step="register", reason="an upstream step failed")

    text = screen(view)
    assert row(text, "evaluate") == "evaluate killed 3.0 s"
    assert row(text, "register") == "register skipped an upstream step failed"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_the_run_prints_the_plain_lines(monkeypatch):
    monkeypatch.delenv("RTO_PLAIN_PROGRESS", raising=False)
    with progress_view(stream=io.StringIO()) as sink:
        assert isinstance(sink, LinePrinter)
    monkeypatch.setenv("RTO_PLAIN_PROGRESS", "1")
    with progress_view(stream=Terminal()) as sink:
        assert isinstance(sink, LinePrinter)
    monkeypatch.setenv("RTO_PLAIN_PROGRESS", "0")
    monkeypatch.setenv("TERM", "dumb")
    with progress_view(stream=Terminal()) as sink:
        assert isinstance(sink, LinePrinter)


def test_ctrl_c_stops_the_live_view_leaving_its_last_picture_and_the_cursor_back(monkeypatch):
    monkeypatch.delenv("RTO_PLAIN_PROGRESS", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    terminal = Terminal()
    with pytest.raises(KeyboardInterrupt):
        with progress_view(stream=terminal) as sink:
            assert isinstance(sink, LiveView)
            sink({"ts": 0.0, "run_id": "digits-1", "event": "step_killed", "step": "train", "attempt": 1})
            raise KeyboardInterrupt

    shown = terminal.getvalue()
    assert shown.rstrip().endswith("\x1b[?25h")  # the cursor is visible again
    assert "killed" in shown.rsplit("\x1b[2K", 1)[-1]  # the final picture, drawn once the block ended


def test_an_mlflow_outage_is_a_warning_line_and_its_end_a_line_of_its_own():
    printer = LinePrinter(io.StringIO())
    down = {"event": "tracking_unavailable", "uri": "http://127.0.0.1:5000", "error": "Connection refused", "queued": 3}
    back = {"event": "tracking_recovered", "uri": "http://127.0.0.1:5000", "down_s": 14.2, "queued": 41}

    assert printer.format(down) == (
        "WARNING MLflow unreachable at http://127.0.0.1:5000 (Connection refused); training goes on, "
        "3 tracking operation(s) queued and retried with backoff"
    )
    assert printer.format(back) == "MLflow reachable again after 14.2 s; storing 41 queued operation(s)"
    assert printer.format({"event": "tracking_lost", "uri": "http://h:5000", "lost": 7}).endswith(
        "7 tracking operation(s) were not stored"
    )


def test_the_live_view_prints_the_mlflow_outage_above_its_table():
    out = io.StringIO()
    view = LiveView(Console(file=out, width=120, record=True), {"train": None})
    view({"event": "tracking_unavailable", "uri": "http://127.0.0.1:5000", "error": "refused", "queued": 1, "ts": 0})

    assert "WARNING MLflow unreachable at http://127.0.0.1:5000 (refused); training goes on" in out.getvalue()


def test_the_clusters_faults_are_one_line_and_the_steps_own_bugs_keep_their_traceback():
    trace = 'Traceback (most recent call last):\n  File "x.py", line 1\nError: x\n'
    stream = io.StringIO()
    printer = LinePrinter(stream)
    printer(
        {
            "ts": 0.0,
            "event": "step_failed",
            "step": "train",
            "attempt": 2,
            "kind": "resources",
            "error": "CapacityLostError: the cluster lost capacity",
            "traceback": trace,
        }
    )
    printer(
        {
            "ts": 0.0,
            "event": "step_failed",
            "step": "evaluate",
            "attempt": 1,
            "kind": "user",
            "error": "ValueError: no test split",
            "traceback": trace,
        }
    )
    shown = stream.getvalue().splitlines()
    shown[:2] = [line.split("  ", 1)[1] for line in shown[:2]]  # less the timestamps

    assert shown[0] == "train      FAILED on attempt 2: CapacityLostError: the cluster lost capacity"
    assert shown[1] == "evaluate   FAILED on attempt 1: ValueError: no test split"
    assert shown[2:] == trace.rstrip().splitlines()  # the step's own traceback, as it was


def test_a_restarting_worker_group_says_why():
    shown = lines(
        {
            "event": "workers_restarting",
            "step": "train",
            "attempt": 1,
            "phase": "RESTARTING",
            "reason": "Training failed due to worker errors: worker 1 died",
        }
    )

    assert shown == [
        "train      restarting its workers from the latest checkpoint: Training failed due to worker errors: worker 1 "
        "died"
    ]


def test_an_elastic_group_says_its_size_as_it_changes_and_a_fixed_one_says_nothing():
    resized = {"event": "workers_resized", "step": "train", "attempt": 1, "min_workers": 1, "max_workers": 2}
    shown = lines(
        {**resized, "world_size": 2, "previous": None},
        {**resized, "world_size": 1, "previous": 2},
        {**resized, "world_size": 4, "previous": None, "min_workers": 4, "max_workers": 4},
    )

    assert shown == ["train      2 worker(s) (elastic 1–2)", "train      workers 2 → 1 (elastic 1–2)"]

    view, _, printed = live_view({"train": None})
    view({"ts": 0.0, "event": "step_started", "step": "train", "attempt": 1})
    view({"ts": 1.0, **resized, "world_size": 1, "previous": 2})
    assert "1 workers (1–2)" in row(screen(view), "train")
    assert "train workers 2 → 1 (elastic 1–2)" in printed.export_text()


def test_a_drained_node_and_a_hung_step_are_warnings_naming_what_to_do():
    shown = lines(
        {
            "event": "node_draining",
            "step": "train",
            "attempt": 1,
            "nodes": ["9f2c1d4e5a6b7c8d"],
            "ranks": [1],
            "deadline_ms": None,
        },
        {
            "event": "step_hung",
            "step": "train",
            "attempt": 1,
            "idle_s": 31.0,
            "limit_s": 30.0,
            "reason": "no progress for 31 s (limit 30 s: hang_timeout_s)",
            "stacks": "rto logs r --step train --attempt 1",
            "processes": 2,
            "detected_ts": 5.0,
        },
    )

    assert shown[0].startswith("train      WARNING node 9f2c1d4e5a6b is being drained (a preemption): rank(s) 1 ")
    assert "without spending max_failures" in shown[0]
    assert shown[1] == (
        "train      HUNG: no progress for 31 s (limit 30 s: hang_timeout_s); the stacks of its 2 process(es): "
        "rto logs r --step train --attempt 1; ending the attempt"
    )


def test_the_live_view_shows_a_mapped_step_as_one_row_counting_its_items_and_a_failed_item_on_its_own():
    view, clock, printed = live_view({"split": None, "fit": None})
    send(view, clock, event="run_started")
    send(view, clock, event="step_mapped", step="fit", attempt=1, items=4, over="split")
    for index in range(4):
        send(view, clock, event="step_started", step=f"fit[{index}]", attempt=1, kind="task", gang="1 × {CPU: 1} PACK")
    send(view, clock, event="step_succeeded", step="fit[0]", attempt=1, metrics={}, duration_s=1.0)
    send(view, clock, event="step_succeeded", step="fit[1]", attempt=1, metrics={}, duration_s=1.0)
    send(
        view,
        clock,
        event="step_failed",
        step="fit[3]",
        attempt=1,
        error="ValueError: no data",
        kind="user",
        reason="error raised by the step's own code",
        traceback="",
    )

    text = screen(view)

    assert "2/4 items done, 1 running, 1 failed" in row(text, "fit")
    assert row(text, "fit[3]").startswith("fit[3] failed")  # the failed item shows
    assert not any(line.split()[:1] == ["fit[0]"] for line in text.splitlines())  # the others are counted
