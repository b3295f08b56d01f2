"""Webhooks told by whole runs through the driver (``engine.driver.execute``) with the fake
backend: a failed run, a run whose step succeeds after a retry, and a run whose webhook is
unreachable — which still succeeds, with the failure to tell it in its events."""

from __future__ import annotations

import json

import pytest

from raytrain_orch.core import constants
from raytrain_orch.core.config import NotifyConfig
from raytrain_orch.core.errors import PipelineFailedError
from raytrain_orch.core.plan import build_plan
from raytrain_orch.engine import driver
from raytrain_orch.engine.notify import Notifier
from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.fakes import FakeBackend, InfraFault
from tests.pipelines.diamond import pipeline

from . import test_notify
from .test_driver import FakeCompute, FakeTracking
from .test_notify import TOKEN
from .test_runner import config

#: The local webhooks of ``test_notify``, as fixtures here too.
serve, closed_port = test_notify.serve, test_notify.closed_port


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(constants, "NOTIFY_BACKOFF_S", 0.01)
    monkeypatch.setattr(constants, "NOTIFY_TRIES", 2)


def run(tmp_path, url: str, script: dict, log: list[str] | None = None) -> tuple[Status, list[dict]]:
    """Run the diamond pipeline with ``script``'s outcomes and one webhook: its status, and the
    records its ``on_event`` was shown."""
    cfg = config(tmp_path).model_copy(update={"notify": [NotifyConfig(url=url)]})
    prepared = driver.Prepared(cfg, pipeline, build_plan(cfg, pipeline))
    log, shown = log if log is not None else [], []
    compute = FakeCompute(log)
    compute.backend = FakeBackend(script)
    try:
        state = driver.execute(
            prepared, compute=compute, tracking=FakeTracking(log), on_event=shown.append, run_id="r1"
        )
    except PipelineFailedError:
        state = RunStore(Storage(cfg.storage)).load("r1")
    return state.status, shown


def test_a_failed_run_tells_its_hook_which_step_failed_and_why(tmp_path, serve):
    hook = serve()

    status, _ = run(tmp_path, hook.url, {"right": [ValueError("bad column")]})

    assert status is Status.FAILED
    ((_, _, body),) = hook.received
    assert (body["alert"], body["run_id"], body["step"], body["status"]) == ("failed", "r1", "right", "FAILED")
    assert body["cause"] == "right failed: ValueError: bad column"
    assert body["status_command"] == f"rto status r1 --storage {tmp_path / 'runs'}"


def test_a_step_that_succeeds_after_a_retry_tells_recovered_then_finished(tmp_path, serve):
    hook = serve()

    status, _ = run(tmp_path, hook.url, {"left": [InfraFault("worker died"), None]})

    assert status is Status.SUCCEEDED
    assert hook.kinds() == ["recovered", "finished"]
    recovered, finished = (body for _, _, body in hook.received)
    assert recovered["step"] == "left" and recovered["cause"].startswith("left succeeded at attempt 2 after: ")
    assert "worker died" in recovered["cause"]
    assert finished["status"] == "SUCCEEDED"


def test_an_unreachable_hook_is_recorded_in_the_runs_events_and_the_run_still_succeeds(
    tmp_path, closed_port, monkeypatch
):
    url, log = f"http://127.0.0.1:{closed_port}/hook/{TOKEN}", []
    for cls, name in ((Notifier, "notifier"), (RunStore, "store")):  # the teardown's order, logged
        monkeypatch.setattr(cls, "close", logged(cls.close, f"{name} closed", log))

    status, shown = run(tmp_path, url, {}, log)

    assert status is Status.SUCCEEDED
    events = RunStore(Storage(str(tmp_path / "runs"))).events("r1")
    (failure,) = [e for e in events if e["event"] == "notify_failed"]
    assert failure["alert"] == "finished" and failure["url"] == f"http://127.0.0.1:{closed_port}/***"
    assert failure["tries"] == 2 and failure["run_id"] == "r1" and "refused" in failure["error"].lower()
    assert events.index(failure) > [e["event"] for e in events].index("run_finished")
    assert "SeCrEtToKeN" not in json.dumps(events)
    assert failure in shown and shown[0]["event"] == "run_started"  # the display is shown every record still
    assert log[-4:] == ["compute left", "notifier closed", "tracking closed", "store closed"]


def logged(close, line: str, log: list[str]):
    def closing(self, *args, **kwargs):
        log.append(line)
        return close(self, *args, **kwargs)

    return closing
