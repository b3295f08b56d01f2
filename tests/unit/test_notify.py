"""Webhook delivery (``engine.notify``) against real local HTTP servers: what a hook receives, a
retry through 500s, an unreachable hook and one that never answers — which never hold the
driver's thread, delay its exit past ``close``'s bound, or leak the hook's URL."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from raytrain_orch.core.alerts import Links
from raytrain_orch.core.config import NotifyConfig
from raytrain_orch.engine import notify
from raytrain_orch.engine.notify import UNSENT, Notifier

from .test_alerts import failed, finished, record, started, step_started, succeeded, waiting

TOKEN = "T000/B000/SeCrEtToKeN"


class Hook:
    """A local webhook: keeps each POST (its path and JSON); answers with ``codes`` in turn, then 200."""

    def __init__(self, codes: tuple[int, ...] = ()):
        self.codes, self.received, self.answers = list(codes), [], []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 — http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code = hook.codes.pop(0) if hook.codes else 200
                hook.answers.append(code)
                if code == 200:
                    hook.received.append((self.path, self.headers["Content-Type"], json.loads(body)))
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/{TOKEN}"

    def kinds(self) -> list[str]:
        return [body["alert"] for _, _, body in self.received]


@pytest.fixture
def serve() -> Iterator:
    servers = []

    def start(codes: tuple[int, ...] = ()) -> Hook:
        hook = Hook(codes)
        threading.Thread(target=hook.server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(hook.server)
        return hook

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A hook that takes the connection and never answers (its backlog accepts; nobody reads)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}/hook/{TOKEN}"


class Reports(list):
    """The notifier's ``report``: what ``Runner.note`` would record."""

    def __call__(self, event, **fields) -> None:
        self.append({"event": str(event), **fields})


def notifier(*urls: str, reports: Reports | None = None, **options) -> Notifier:
    hooks = [NotifyConfig(url=url) for url in urls]
    sender = Notifier(hooks, Links("/data/rto"), "digits", **{"backoff_s": 0.01, **options})
    sender.report_to(reports if reports is not None else Reports())
    sender.start()
    return sender


def failed_run() -> list[dict]:
    return [
        started(),
        step_started("right"),
        failed("right", "ValueError: bad column\nTraceback …"),
        finished("FAILED"),
    ]


def test_a_hook_receives_the_alert_as_json_with_its_fields(serve):
    hook = serve()
    sender = notifier(hook.url)

    for r in failed_run():
        sender.consume(r)
    sender.close(5.0)

    ((path, content_type, body),) = hook.received
    assert (path, content_type) == (f"/hook/{TOKEN}", "application/json")
    assert body["alert"] == "failed" and body["step"] == "right" and body["status"] == "FAILED"
    assert body["cause"] == "right failed: ValueError: bad column"
    assert body["status_command"] == "rto status r1 --storage /data/rto" and body["mlflow_url"] is None
    assert body["text"].startswith("[rto] failed: digits run r1: right failed: ValueError: bad column")


def test_a_hook_that_answers_500_twice_gets_the_message_at_the_third_try(serve):
    hook, reports = serve(codes=(500, 500)), Reports()
    sender = notifier(hook.url, reports=reports, tries=3)

    for r in failed_run():
        sender.consume(r)
    sender.close(5.0)

    assert hook.answers == [500, 500, 200]
    assert hook.kinds() == ["failed"] and reports == []


def test_a_refusal_no_retry_changes_is_tried_once_and_reported(serve):
    hook, reports = serve(codes=(404,)), Reports()
    sender = notifier(hook.url, reports=reports, tries=4)

    for r in failed_run():
        sender.consume(r)
    sender.close(5.0)

    assert hook.answers == [404]
    assert [(r["alert"], r["tries"], r["error"]) for r in reports] == [("failed", 1, "HTTP 404: Not Found")]


def test_an_unreachable_hook_never_holds_consume_and_is_reported_with_its_url_redacted(closed_port):
    url, reports = f"http://127.0.0.1:{closed_port}/hook/{TOKEN}", Reports()
    sender = notifier(url, reports=reports, tries=3)
    progress = {"step": "t", "metrics": {}, "perf": {}, "epoch_s": 1.0, "report_s": 0.0, "log_s": 0.0}
    records = failed_run() + [record("epoch", 4.0, epoch=i, **progress) for i in range(200)]

    slowest = 0.0
    for r in records:
        begun = time.perf_counter()
        sender.consume(r)
        slowest = max(slowest, time.perf_counter() - begun)
    sender.close(5.0)

    assert slowest < 0.010
    (report,) = reports
    assert report["event"] == "notify_failed" and report["alert"] == "failed" and report["step"] == "right"
    assert report["url"] == f"http://127.0.0.1:{closed_port}/***" and report["tries"] == 3
    assert "Connection refused" in report["error"] or "ConnectionRefused" in report["error"]
    assert "SeCrEtToKeN" not in json.dumps(reports) and "\n" not in report["error"]


def test_close_returns_within_its_bound_with_a_hook_that_never_answers(blackhole):
    reports = Reports()
    sender = notifier(blackhole, reports=reports, timeout_s=30.0)
    for r in failed_run():
        sender.consume(r)

    begun = time.monotonic()
    sender.close(0.5)
    took = time.monotonic() - begun

    assert 0.4 < took < 1.5
    assert [(r["alert"], r["error"], r["tries"]) for r in reports] == [("failed", UNSENT, 1)]
    assert reports[0]["url"].endswith("/***") and "SeCrEtToKeN" not in json.dumps(reports)


def test_a_hook_that_never_answers_holds_no_other_hooks_message(blackhole, serve):
    hook = serve()
    sender = notifier(blackhole, hook.url, timeout_s=30.0)
    for r in failed_run():
        sender.consume(r)

    deadline = time.monotonic() + 5.0
    while not hook.received and time.monotonic() < deadline:
        time.sleep(0.01)

    assert hook.kinds() == ["failed"]  # while the other hook's first try still waits for an answer
    sender.close(0.1)


def test_a_long_wait_is_told_by_the_notifiers_own_tick(serve, monkeypatch):
    monkeypatch.setattr(notify, "TICK_S", 0.02)
    hook = serve()
    hooks = [NotifyConfig(url=hook.url, on=["waiting"], waiting_after_s=60)]
    now = [100.0]
    sender = Notifier(hooks, Links("/data/rto"), clock=lambda: now[0])
    sender.start()
    for r in (started(), step_started("train", ts=100.0), waiting("train", ts=100.0)):
        sender.consume(r)

    time.sleep(0.1)
    assert hook.received == []  # 0 s waited
    now[0] = 161.0
    deadline = time.monotonic() + 5.0
    while not hook.received and time.monotonic() < deadline:
        time.sleep(0.01)
    sender.close(1.0)

    assert hook.kinds() == ["waiting"]
    assert hook.received[0][2]["cause"].startswith("train has waited 1 min 1 s for its gang")


def test_reports_before_report_to_are_kept_for_it(closed_port):
    sender = Notifier([NotifyConfig(url=f"http://127.0.0.1:{closed_port}/x/{TOKEN}")], Links("/r"), tries=1)
    sender.start()
    for r in (started(), step_started("a"), succeeded("a"), finished("SUCCEEDED")):
        sender.consume(r)
    time.sleep(0.3)  # refused at once: reported before anyone listens
    reports = Reports()

    sender.report_to(reports)
    sender.close(5.0)

    assert [(r["alert"], r["tries"]) for r in reports] == [("finished", 1)]
