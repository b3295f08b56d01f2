"""Events are types: one module names them all, the code emits none by a bare string, and an
``events.jsonl`` written before the types existed still reads and shows."""

from __future__ import annotations

import ast
import io
import json
import shutil
from pathlib import Path

import pytest

from raytrain_orch.cli.progress import LinePrinter
from raytrain_orch.cli.status import describe
from raytrain_orch.core.events import Event, kind, required
from raytrain_orch.store.state import RunState, RunStore, Status
from raytrain_orch.store.storage import Storage

from .conftest import REPO

DATA = REPO / "tests" / "data"
#: Calls whose first event argument names an event.
EMITTERS = {"emit": 0, "_record": 1, "on_note": 0, "note": 0, "append_event": 1}


def test_no_event_is_emitted_by_a_bare_string():
    bare = []
    for path in sorted((REPO / "raytrain_orch").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                index = EMITTERS.get(name)
                if index is not None and len(node.args) > index and isinstance(node.args[index], ast.Constant):
                    bare.append(f"{path.relative_to(REPO)}:{node.lineno} {name}({node.args[index].value!r})")

    assert bare == []


def test_an_event_prints_and_serialises_as_its_name():
    assert f"{Event.STEP_WAITING}" == str(Event.STEP_WAITING) == "step_waiting"
    assert json.dumps({"event": Event.EPOCH}) == '{"event": "epoch"}'
    assert Event.EPOCH == "epoch"  # records compare equal whichever way they were read


@pytest.fixture
def older_run(tmp_path: Path) -> tuple[RunStore, RunState]:
    """A run recorded before events had types, as its run directory holds it."""
    store = RunStore(Storage(str(tmp_path)))
    state = RunState.from_dict(json.loads((DATA / "state-before-typed.json").read_text()))
    directory = Path(store.storage.path(*store.run_path(state.run_id)))
    directory.mkdir(parents=True)
    shutil.copy(DATA / "events-before-typed.jsonl", directory / "events.jsonl")
    return store, state


def test_events_recorded_before_the_types_read_with_the_fields_their_types_declare(older_run):
    store, state = older_run

    records = store.events(state.run_id)

    assert len(records) == 29
    unknown = [r for r in records if kind(r) is None]
    assert [r["event"] for r in unknown] == ["from_a_newer_version"]  # kept as it is, not an error
    for record in records:
        if kind(record) is not None:
            assert required(kind(record)) <= set(record), record


def test_a_run_recorded_before_the_types_still_shows(older_run):
    store, state = older_run
    records = store.events(state.run_id)
    stream = io.StringIO()

    shown = describe(state, records)
    printer = LinePrinter(stream)
    for record in records:
        printer(record)

    assert shown["status"] == "SUCCEEDED" and state.status is Status.SUCCEEDED
    assert "train      resuming after epoch 17" in stream.getvalue()  # its checkpoint of epoch index 16
    assert "train      FAILED on attempt 2: CapacityLostError: the cluster lost capacity" in stream.getvalue()
