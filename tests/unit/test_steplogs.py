"""A step attempt's own output, kept with its run: capture where the step runs, read for `rto logs`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from raytrain_orch.cli.main import main
from raytrain_orch.context import StepContext
from raytrain_orch.core.errors import EXIT_USAGE, ConfigError, StorageError
from raytrain_orch.store import logcapture, steplogs
from raytrain_orch.store.state import RunState, RunStore, Status, StepState
from raytrain_orch.store.storage import Storage

from .conftest import REPO


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(Storage(str(tmp_path / "rto-runs")))


def context(store: RunStore, step: str = "prepare", attempt: int = 1, trial: str | None = None) -> StepContext:
    return StepContext(
        run_id="r1",
        step=step,
        attempt=attempt,
        storage_uri=store.storage.root_uri,
        run_path=store.run_path("r1"),
        artifact_path=("cache", step, "k"),
        tracking_uri="",
        trial=trial,
    )


def log_text(store: RunStore, *parts: str) -> str:
    return Path(store.storage.path(*store.run_path("r1", "logs", *parts))).read_text()


# --- capture -----------------------------------------------------------------------------------


def test_print_lands_in_the_log_and_still_on_the_console(store, capsys):
    with logcapture.capture(context(store)):
        print("marker 42")
        print("to stderr", file=sys.stderr)

    out, err = capsys.readouterr()
    assert out == "marker 42\n" and err == "to stderr\n"
    assert log_text(store, "prepare", "attempt-1.log") == "marker 42\nto stderr\n"


def test_secrets_the_step_holds_are_masked_in_its_log_and_on_the_console(store, capsys, monkeypatch):
    from dataclasses import replace

    monkeypatch.setenv("SOURCE_API_TOKEN", "env-token-98765")  # passed to a job with --env
    with logcapture.capture(replace(context(store), secrets=("param-token-12345",))):
        print("params: param-token-12345, env: env-token-98765")
        logging.getLogger("careless").warning("retrying with %s", "env-token-98765")

    log = log_text(store, "prepare", "attempt-1.log")
    console = capsys.readouterr()
    for shown in (log, console.out + console.err):
        assert "param-token-12345" not in shown and "env-token-98765" not in shown
    assert "params: ***, env: ***" in log and "params: ***, env: ***" in console.out
    assert "retrying with ***" in log


def test_a_fresh_process_keeps_print_logging_and_warnings_on_its_streams_and_in_the_log(store):
    # A real interpreter, as in a Ray worker: no pytest capture, no logging configured, default warnings.
    script = textwrap.dedent(
        f"""
        import logging, warnings
        from raytrain_orch.store import logcapture
        from raytrain_orch.context import StepContext
        ctx = StepContext(run_id="r1", step="prepare", attempt=1, storage_uri={store.storage.root_uri!r},
                          run_path=("runs", "r1"), artifact_path=(), tracking_uri="")
        with logcapture.capture(ctx):
            print("printed", flush=True)
            logging.getLogger("user.code").warning("logged warning")
            logging.getLogger("user.code").info("below the root level: shown nowhere")
            warnings.warn("a python warning")
        print("after the step")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout == "printed\nafter the step\n"
    assert "logged warning" in done.stderr and "UserWarning: a python warning" in done.stderr
    log = log_text(store, "prepare", "attempt-1.log")
    assert log.startswith("printed\n")
    assert log.count("logged warning") == 1
    assert "UserWarning: a python warning" in log
    assert "shown nowhere" not in log and "after the step" not in log


def test_records_of_configured_loggers_land_in_the_log_once(store):
    logger = logging.getLogger("tests.steplogs.configured")
    logger.setLevel(logging.INFO)

    with logcapture.capture(context(store)):
        logger.info("epoch 3 done")

    log = log_text(store, "prepare", "attempt-1.log")
    assert log.count("epoch 3 done") == 1
    assert "INFO tests.steplogs.configured: epoch 3 done" in log


def test_a_failing_step_leaves_its_traceback_in_the_log_and_raises_unchanged(store):
    error = ValueError("bad shape at epoch 1")

    def step():
        print("before the bug")
        raise error

    with pytest.raises(ValueError) as raised:
        with logcapture.capture(context(store, attempt=2)):
            step()

    assert raised.value is error
    log = log_text(store, "prepare", "attempt-2.log")
    assert log.startswith("before the bug\nTraceback (most recent call last):\n")
    assert "in step\n" in log and log.endswith("ValueError: bad shape at epoch 1\n")


def test_streams_and_root_handlers_are_restored_also_after_a_failure(store):
    stdout, stderr, handlers = sys.stdout, sys.stderr, list(logging.getLogger().handlers)

    with logcapture.capture(context(store)):
        assert sys.stdout is not stdout and len(logging.getLogger().handlers) == len(handlers) + 1
    with pytest.raises(KeyError):
        with logcapture.capture(context(store, attempt=2)):
            raise KeyError("x")

    assert sys.stdout is stdout and sys.stderr is stderr
    assert logging.getLogger().handlers == handlers


def test_train_workers_and_sweep_trials_write_their_own_files(store):
    with logcapture.capture(context(store, step="train"), rank=1):
        print("rank 1 here")
    with logcapture.capture(context(store, step="train", trial="train_00002"), rank=0):
        print("trial rank 0 here")

    assert log_text(store, "train", "attempt-1.rank-1.log") == "rank 1 here\n"
    assert log_text(store, "train", "train_00002", "attempt-1.rank-0.log") == "trial rank 0 here\n"


def test_a_restarted_worker_group_appends_to_the_same_attempt(store):
    for line in ("first run\n", "after the restart\n"):
        with logcapture.capture(context(store, step="train"), rank=0):
            print(line, end="")

    assert log_text(store, "train", "attempt-1.rank-0.log") == "first run\nafter the restart\n"


@pytest.mark.parametrize("step", ["..", "../../escaped", "a/b"])
def test_path_escaping_names_are_rejected(store, step):
    with pytest.raises(StorageError, match="not a safe name"):
        steplogs.log_parts(store.run_path("r1"), step, 1)
    with pytest.raises(StorageError, match="not a safe name"):
        steplogs.log_parts(store.run_path("r1"), "train", 1, rank=0, trial=step)


def test_a_log_that_cannot_be_written_warns_once_and_never_fails_the_step(store, tmp_path, capsys):
    # A real fault: the log file is /dev/full, whose every write fails with ENOSPC.
    target = Path(store.storage.path(*store.run_path("r1", "logs", "prepare", "attempt-1.log")))
    target.parent.mkdir(parents=True)
    target.symlink_to("/dev/full")

    with pytest.warns(RuntimeWarning, match="log of step prepare attempt 1 is not kept") as caught:
        with logcapture.capture(context(store)):
            print("one")
            print("two")
            logging.getLogger("tests.steplogs").warning("three")

    assert len(caught) == 1
    assert capsys.readouterr().out == "one\ntwo\n"


def test_an_unsafe_step_name_gets_no_log_and_the_step_runs_on(store, tmp_path, capsys):
    with pytest.warns(RuntimeWarning, match="not a safe name"):
        with logcapture.capture(context(store, step="../../evil")):
            print("still runs")

    assert capsys.readouterr().out == "still runs\n"
    assert not any(p.name == "evil" for p in tmp_path.rglob("*"))


def test_remote_storage_uploads_the_log_when_the_attempt_ends_also_on_failure(store, tmp_path, monkeypatch):
    monkeypatch.setattr(Storage, "local_path", lambda self, *parts: None)  # as on s3://
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    final = Path(store.storage.path(*store.run_path("r1", "logs", "prepare", "attempt-1.log")))

    with pytest.raises(RuntimeError):
        with logcapture.capture(context(store)):
            print("remote line")
            assert not final.exists()  # kept in a temporary file meanwhile
            raise RuntimeError("disk on fire")

    assert list((tmp_path / "tmp").iterdir()) == []  # the temporary file is gone
    text = final.read_text()
    assert text.startswith("remote line\nTraceback") and text.endswith("RuntimeError: disk on fire\n")
    state = run_state(store, prepare=Status.FAILED)
    assert "remote line" in "".join(steplogs.show(store, state, step="prepare"))  # read back through the filesystem


# --- listing and reading -----------------------------------------------------------------------


def run_state(store: RunStore, status: Status = Status.SUCCEEDED, **steps: Status) -> RunState:
    state = RunState(
        "r1",
        "demo",
        "tests.demo:pipeline",
        "hash",
        status=status,
        steps={n: StepState(status=s) for n, s in steps.items()},
    )
    store.save(state)
    return state


def write_log(store: RunStore, *parts: str, text: str) -> None:
    store.storage.write_bytes(text.encode(), *store.run_path("r1", "logs", *parts))


@pytest.fixture
def kept(store) -> RunState:
    """prepare ran once, train twice on two ranks, evaluate not yet."""
    write_log(store, "prepare", "attempt-1.log", text="prepared 1797 rows\n")
    for attempt in (1, 2):
        for rank in (0, 1):
            write_log(
                store, "train", f"attempt-{attempt}.rank-{rank}.log", text=f"train attempt {attempt} rank {rank}\n"
            )
    return run_state(store, Status.RUNNING, prepare=Status.SUCCEEDED, train=Status.RUNNING, evaluate=Status.PENDING)


def test_each_steps_latest_attempt_and_every_rank_in_pipeline_order(store, kept):
    chosen = steplogs.select(store, kept)

    assert [entry.step for entry in chosen] == ["prepare", "train", "evaluate"]
    assert [f.title for f in chosen[0].files] == ["prepare attempt 1"]
    assert [f.title for f in chosen[1].files] == ["train attempt 2 rank 0", "train attempt 2 rank 1"]
    assert chosen[2].files == () and chosen[2].note == "evaluate: pending, no log yet (the step has not started)"


def test_an_earlier_attempt_and_one_rank_on_request(store, kept):
    (entry,) = steplogs.select(store, kept, step="train", attempt=1, rank=1)

    assert [f.parts[-1] for f in entry.files] == ["attempt-1.rank-1.log"]
    (missing,) = steplogs.select(store, kept, step="train", attempt=3)
    assert (
        missing.note
        == "train: no log of attempt 3 (kept: attempt 1 rank 0, attempt 1 rank 1, attempt 2 rank 0, attempt 2 rank 1)"
    )


def test_sweep_trials_are_listed_under_their_step(store):
    for trial in ("train_00001", "train_00000"):
        write_log(store, "train", trial, "attempt-1.rank-0.log", text=f"{trial}\n")
    state = run_state(store, train=Status.SUCCEEDED)

    (entry,) = steplogs.select(store, state)

    assert [f.title for f in entry.files] == [
        "train attempt 1 trial train_00000 rank 0",
        "train attempt 1 trial train_00001 rank 0",
    ]


def test_show_prints_headers_contents_and_notes(store, kept):
    kept.steps["evaluate"].status = Status.CACHED

    text = "".join(steplogs.show(store, kept))

    assert text == (
        "==> prepare attempt 1 (runs/r1/logs/prepare/attempt-1.log) <==\nprepared 1797 rows\n"
        "\n==> train attempt 2 rank 0 (runs/r1/logs/train/attempt-2.rank-0.log) <==\ntrain attempt 2 rank 0\n"
        "\n==> train attempt 2 rank 1 (runs/r1/logs/train/attempt-2.rank-1.log) <==\ntrain attempt 2 rank 1\n"
        "evaluate: cached, no log (the output was reused from an earlier run)\n"
    )


def test_an_unknown_step_names_it_suggests_one_and_lists_the_steps(store, kept):
    with pytest.raises(ConfigError) as raised:
        steplogs.select(store, kept, step="trian")

    assert (
        str(raised.value) == "run r1 has no step 'trian' (its steps: prepare, train, evaluate); did you mean 'train'?"
    )
    assert raised.value.exit_code == EXIT_USAGE
    with pytest.raises(ConfigError, match="--attempt needs --step"):
        steplogs.select(store, kept, attempt=1)


def test_follow_prints_new_lines_until_the_run_ends(store, kept):
    path = Path(store.storage.path(*store.run_path("r1", "logs", "train", "attempt-2.rank-0.log")))
    polls = []

    def sleep(seconds):
        polls.append(seconds)
        with open(path, "a") as log:
            log.write(f"epoch {len(polls)}\n" if len(polls) < 3 else "partial")
        if len(polls) == 3:
            run_state(
                store, Status.SUCCEEDED, prepare=Status.SUCCEEDED, train=Status.SUCCEEDED, evaluate=Status.PENDING
            )

    text = "".join(steplogs.follow(store, kept, step="train", rank=0, sleep=sleep))

    assert polls == [0.5, 0.5, 0.5]
    assert (
        text
        == "==> train attempt 2 rank 0 (runs/r1/logs/train/attempt-2.rank-0.log) <==\ntrain attempt 2 rank 0\nepoch "
        "1\nepoch 2\npartial\n"
    )


# --- the command -------------------------------------------------------------------------------


def test_rto_logs_prints_the_newest_runs_logs(store, kept, capsys):
    assert main(["logs", "--storage", store.storage.root_uri, "--step", "train", "--rank", "1"]) == 0

    assert (
        capsys.readouterr().out
        == "==> train attempt 2 rank 1 (runs/r1/logs/train/attempt-2.rank-1.log) <==\ntrain attempt 2 rank 1\n"
    )


def test_rto_logs_of_an_unknown_step_is_one_line_and_exit_2(store, kept, capsys):
    assert main(["logs", "r1", "--storage", store.storage.root_uri, "--step", "nosuch"]) == EXIT_USAGE

    err = capsys.readouterr().err
    assert err == "rto: error: run r1 has no step 'nosuch' (its steps: prepare, train, evaluate)\n"


def test_capture_module_loads_neither_ray_mlflow_nor_torch():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, raytrain_orch.store.steplogs; print(sorted({'ray', 'mlflow', 'torch'} & set(sys.modules)))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )

    assert done.stdout.strip() == "[]", done.stderr
