"""The storage root (local filesystem) and the durable run record kept there."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest

from raytrain_orch.core import constants
from raytrain_orch.core.errors import RunNotFoundError, StorageError
from raytrain_orch.store.state import RunState, RunStore, Status, StepState, new_run_id
from raytrain_orch.store.storage import Storage, safe_name


@pytest.fixture
def storage(tmp_path) -> Storage:
    return Storage(str(tmp_path / "root"))


# --- Storage -----------------------------------------------------------------------------------


def test_relative_root_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    assert Storage("./rto-runs").root_uri == str(tmp_path.resolve() / "rto-runs")


def test_write_bytes_replaces_content_and_leaves_no_temporary(storage):
    storage.write_bytes(b"first", "runs", "r1", "state.json")
    storage.write_bytes(b"second", "runs", "r1", "state.json")

    assert storage.read_bytes("runs", "r1", "state.json") == b"second"
    assert sorted(os.listdir(storage.path("runs", "r1"))) == ["state.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(storage, monkeypatch):
    storage.write_bytes(b"old", "state.json")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        storage.write_bytes(b"new", "state.json")

    assert storage.read_bytes("state.json") == b"old"
    assert os.listdir(storage.path()) == ["state.json"]


def test_json_round_trip(storage):
    value = {"a": 1, "b": [1.5, "x", None], "nested": {"ok": True}}

    storage.write_json(value, "x", "v.json")

    assert storage.read_json("x", "v.json") == value
    assert storage.exists("x", "v.json")
    assert not storage.exists("x", "other.json")


def test_damaged_json_is_a_storage_error(storage):
    storage.write_bytes(b'{"a": 1', "v.json")

    with pytest.raises(StorageError, match=r"v\.json is not valid JSON .*the file is damaged"):
        storage.read_json("v.json")


def test_table_round_trip(storage):
    table = pa.table({"p0": pa.array([0.5, -1.25], pa.float32()), "label": pa.array([3, 7], pa.int64())})

    storage.write_table(table, "artifacts", "prepare", "train.parquet")
    loaded = storage.read_table("artifacts", "prepare", "train.parquet")

    assert loaded.equals(table)
    assert loaded.schema.field("p0").type == pa.float32()


def test_listdir_is_sorted_and_empty_for_a_missing_dir(storage):
    for name in ("b", "a", "c"):
        storage.write_bytes(b"", "d", name)

    assert storage.listdir("d") == ["a", "b", "c"]
    assert storage.listdir("missing") == []


@pytest.mark.parametrize("bad", ["..", ".", "a/b", "/abs", "", "a\\b", "~user", "../x"])
def test_safe_name_rejects_names_that_escape_the_root(bad):
    with pytest.raises(StorageError, match=r"is not a safe name: use letters, digits"):
        safe_name(bad, "run id")


@pytest.mark.parametrize("good", ["digits-20250101-120000-abcdef", "a.b_c-1"])
def test_safe_name_accepts_plain_names(good):
    assert safe_name(good, "run id") == good


# --- RunStore ----------------------------------------------------------------------------------


def _state(run_id: str, created_at: float = 1000.0) -> RunState:
    state = RunState(run_id=run_id, name="digits", pipeline="digits", config_hash="abc123", created_at=created_at)
    # Deliberately not alphabetical: the record must keep the pipeline's order.
    state.steps["prepare"] = StepState(
        status=Status.SUCCEEDED, cache_key="k1", attempts=1, metrics={"rows_train": 1257.0}
    )
    state.steps["train"] = StepState(status=Status.FAILED, kind="train", attempts=3, error="RuntimeError: boom")
    state.steps["evaluate"] = StepState(status=Status.SKIPPED)
    state.steps["register"] = StepState()
    return state


def test_save_load_round_trip_keeps_order_and_enums(storage):
    store = RunStore(storage)
    state = _state("digits-1")
    state.status = Status.FAILED

    store.save(state)
    loaded = store.load("digits-1")

    assert loaded == state
    assert list(loaded.steps) == ["prepare", "train", "evaluate", "register"]
    assert loaded.status is Status.FAILED
    assert loaded.steps["train"].status is Status.FAILED
    assert loaded.steps["evaluate"].status is Status.SKIPPED
    assert loaded.steps["prepare"].metrics == {"rows_train": 1257.0}


def test_state_file_lives_under_runs_run_id(storage):
    RunStore(storage).save(_state("digits-1"))

    record = json.loads(storage.read_bytes(constants.RUNS_DIR, "digits-1", constants.STATE_FILE))
    assert record["status"] == "PENDING"
    assert list(record["steps"]) == ["prepare", "train", "evaluate", "register"]


def test_list_is_newest_first(storage):
    store = RunStore(storage)
    for run_id, created in (("a-old", 100.0), ("c-new", 300.0), ("b-mid", 200.0)):
        store.save(_state(run_id, created_at=created))

    assert [r.run_id for r in store.list()] == ["c-new", "b-mid", "a-old"]
    assert store.latest().run_id == "c-new"


def test_list_skips_unreadable_records(storage):
    store = RunStore(storage)
    store.save(_state("good"))
    storage.write_bytes(b"not json", constants.RUNS_DIR, "damaged", constants.STATE_FILE)
    storage.write_json({"run_id": "old-format"}, constants.RUNS_DIR, "old-format", constants.STATE_FILE)

    assert [r.run_id for r in store.list()] == ["good"]


def test_record_of_another_version_is_a_storage_error(storage):
    storage.write_json({"run_id": "x"}, constants.RUNS_DIR, "x", constants.STATE_FILE)

    with pytest.raises(StorageError, match=r"is not a run record this version understands"):
        RunStore(storage).load("x")


def test_load_of_a_missing_run_points_to_rto_runs(storage):
    with pytest.raises(RunNotFoundError) as raised:
        RunStore(storage).load("digits-nope")

    assert str(raised.value) == f"no run 'digits-nope' under {storage.root_uri}; `rto runs` lists the runs there"


def test_latest_with_no_runs_says_how_to_start_one(storage):
    with pytest.raises(RunNotFoundError, match=r"no runs under .* yet; start one with `rto run CONFIG`"):
        RunStore(storage).latest()


@pytest.mark.parametrize("run_id", ["../escape", "..", "a/b", "/etc"])
def test_run_ids_that_escape_the_root_are_rejected(storage, run_id):
    store = RunStore(storage)

    with pytest.raises(StorageError, match=r"run id .* is not a safe name"):
        store.load(run_id)
    with pytest.raises(StorageError):
        store.save(_state(run_id))
    with pytest.raises(StorageError):
        store.append_event(run_id, {"event": "run_started"})
    assert not os.path.exists(storage.root_uri)  # nothing was written, inside the root or beside it


def test_events_append_and_read_back_in_order(storage):
    store = RunStore(storage)

    store.append_event("digits-1", {"event": "run_started"})
    store.append_event("digits-1", {"event": "step_started", "step": "prepare", "attempt": 1})
    store.append_event("digits-1", {"event": "step_succeeded", "step": "prepare", "metrics": {"rows_train": 1257}})

    events = store.events("digits-1")
    assert [e["event"] for e in events] == ["run_started", "step_started", "step_succeeded"]
    assert events[1]["step"] == "prepare" and events[1]["attempt"] == 1
    assert events[2]["metrics"] == {"rows_train": 1257}
    assert all(e["run_id"] == "digits-1" for e in events)
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)


def test_events_of_a_run_without_any_are_empty(storage):
    assert RunStore(storage).events("digits-1") == []


def test_terminal_statuses():
    assert {s for s in Status if s.terminal} == {
        Status.SUCCEEDED,
        Status.CACHED,
        Status.FAILED,
        Status.SKIPPED,
        Status.KILLED,
    }
    assert {s for s in Status if s.done} == {Status.SUCCEEDED, Status.CACHED}  # what downstream steps may read


def test_new_run_id_is_a_safe_unique_name():
    first, second = new_run_id("digits"), new_run_id("digits")

    assert first.startswith("digits-") and first != second
    assert safe_name(first, "run id") == first
