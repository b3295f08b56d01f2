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
from raytrain_orch.core.events import Consumer, Event, decode, encode, kind, make, required
from raytrain_orch.core.run_view import RunView
from raytrain_orch.store.state import RunState, RunStore, Status
from raytrain_orch.store.storage import Storage

from .conftest import REPO

DATA = REPO / "tests" / "data"
#: Calls whose first event argument names an event.
EMITTERS = {"emit": 0, "make": 0, "on_note": 0, "note": 0}


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


def test_a_producer_gets_its_record_only_with_the_fields_its_event_declares():
    record = make(Event.STEP_ADMITTED, step="train", attempt=1, waited_s=0.5, ts=3.0)

    assert record == {"event": "step_admitted", "step": "train", "attempt": 1, "waited_s": 0.5, "ts": 3.0}
    with pytest.raises(TypeError, match=r"step_admitted: no field 'waited'; did you mean 'waited_s'\?"):
        make(Event.STEP_ADMITTED, step="train", attempt=1, waited=0.5)
    with pytest.raises(TypeError, match=r"step_hung: missing field 'idle_s'"):
        make(Event.STEP_HUNG, step="train", limit_s=1.0, reason="r", stacks="s", processes=1, detected_ts=2.0)


def test_a_record_goes_to_its_line_and_back_unchanged():
    record = make(
        Event.EPOCH, step="t", attempt=1, epoch=0, metrics={"loss": 0.5}, perf={}, epoch_s=1.0, report_s=0.1, log_s=0.0
    )

    assert decode(encode(record)) == record
    assert decode('{"event": "from_a_newer_version", "x": 1}') == {"event": "from_a_newer_version", "x": 1}


def test_a_consumer_hears_only_the_events_it_has_hooks_for():
    class Starts(Consumer):
        def __init__(self):
            self.heard = []

        def on_step_started(self, record):
            self.heard.append(record["step"])
            return "seen"

    starts = Starts()
    assert starts.consume({"event": "step_started", "step": "train"}) == "seen"
    assert starts.consume({"event": "epoch", "step": "train"}) is None
    assert starts.consume({"event": "from_a_newer_version"}) is None
    assert starts.heard == ["train"]


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

    shown = describe(state, RunView.of(records))
    printer = LinePrinter(stream)
    for record in records:
        printer(record)

    assert shown["status"] == "SUCCEEDED" and state.status is Status.SUCCEEDED
    assert "train      resuming after epoch 17" in stream.getvalue()  # its checkpoint of epoch index 16
    assert "train      FAILED on attempt 2: CapacityLostError: the cluster lost capacity" in stream.getvalue()
