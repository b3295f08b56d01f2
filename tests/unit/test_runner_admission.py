"""The durable record of a step that waits for its gang, without Ray."""

from __future__ import annotations

from raytrain_orch.core.config import load_config
from raytrain_orch.core.plan import build_plan
from raytrain_orch.engine.runner import Runner
from raytrain_orch.store.state import RunState, RunStore, Status, StepState
from raytrain_orch.store.storage import Storage

from .conftest import DIGITS_YAML


class Events:
    """A backend that only hands over progress events."""

    def __init__(self, events: list[dict]):
        self.events = events

    def drain_events(self) -> list[dict]:
        events, self.events = self.events, []
        return events


def test_a_step_admitted_after_a_short_wait_is_recorded_running_again(tmp_path):
    from jobs.digits import pipeline

    config = load_config(DIGITS_YAML)
    plan = build_plan(config, pipeline)
    store = RunStore(Storage(str(tmp_path)))
    backend = Events(
        [
            {
                "event": "step_waiting",
                "step": "train",
                "attempt": 1,
                "reason": "waiting for resources: …",
                "position": 1,
            },
            {"event": "step_admitted", "step": "train", "attempt": 1, "waited_s": 0.2},
        ]
    )
    runner = Runner(config, pipeline, plan, backend, store, tracking=None)
    state = RunState(
        run_id="r1",
        name="digits",
        pipeline="digits",
        config_hash="h",
        steps={"train": StepState(status=Status.RUNNING, kind="train", attempts=1)},
    )

    runner._drain(state)

    saved = store.load("r1").steps["train"]
    assert saved.status is Status.RUNNING and saved.waiting is None
    assert [e["event"] for e in store.events("r1")] == ["step_waiting", "step_admitted"]
