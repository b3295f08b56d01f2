"""Webhook delivery (``notify:``): ``Notifier`` sends what ``core.alerts.Alerts`` decides, off the run's path.

The driver hands it every recorded event (``consume``: a queue put, so the run never waits for
a webhook). Its threads:
- one dispatcher owns the run's ``Alerts``: it folds the records in order, ticks them every
  second (``waiting`` needs a clock), and queues each delivery on its hook's sender;
- one sender per hook POSTs its messages in order, each try bounded by ``NOTIFY_TIMEOUT_S``,
  retried ``NOTIFY_TRIES`` times with backoff from ``NOTIFY_BACKOFF_S`` doubling.
A sender per hook, rather than one sending thread: a hook that never answers then holds only its
own messages (for a try's timeout and its backoffs), never another hook's; a run names one or two.

A message it could not send is reported (``report``: ``Runner.note``) as ``notify_failed``. The
webhook's URL is a secret: only ``redact_url``'s form of it is reported, and it is masked out of
the error's text. ``close`` waits at most ``NOTIFY_FLUSH_S`` for what is still going out, then
reports the rest as not sent: an unreachable webhook delays the driver's exit by that bound at
most, and the run not at all.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from raytrain_orch.core import constants
from raytrain_orch.core.alerts import Alert, Alerts, Delivery, Links, message
from raytrain_orch.core.config import NotifyConfig, PipelineConfig
from raytrain_orch.core.events import Event, EventSink
from raytrain_orch.core.redact import masked, redact_url
from raytrain_orch.core.text import gist
from raytrain_orch.store.state import RunStore

log = logging.getLogger(__name__)

#: How often the dispatcher ticks the alerts (``waiting``'s resolution).
TICK_S = 1.0
#: The error of a message still unsent when the driver exits.
UNSENT = "not sent before the driver exited"
#: What a sender or the dispatcher takes as the end of its queue.
_STOP: Any = object()
#: ``report(event, **fields)``: ``Runner.note``.
Report = Callable[..., None]
#: ``post(url, body, timeout_s)``: raises on anything but a 2xx answer.
Post = Callable[[str, bytes, float], None]


def post_json(url: str, body: bytes, timeout_s: float) -> None:
    """POST ``body`` as JSON; an HTTP error status raises ``urllib.error.HTTPError``."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "rto-notify"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        response.read()


def final(error: BaseException) -> bool:
    """A refusal that no retry changes: a 4xx other than a timeout or a rate limit (a wrong URL,
    a revoked token, a body the hook rejects)."""
    return isinstance(error, urllib.error.HTTPError) and 400 <= error.code < 500 and error.code not in (408, 429)


def recorded_ids(store: RunStore) -> Callable[[str], Mapping[str, Any]]:
    """A run's MLflow ids as its record (``state.json``) holds them now; none when it cannot be read."""

    def ids(run_id: str) -> Mapping[str, Any]:
        try:
            return store.load(run_id).mlflow
        except Exception:  # noqa: BLE001 — a message without its MLflow link beats no message
            return {}

    return ids


@dataclass(eq=False)  # each message is itself: settled once, by its sender or by ``close``
class _Message:
    delivery: Delivery
    tries: int = 0


class Notifier:
    """A run's webhooks, told what its events call for. ``start``, then ``consume`` every record;
    ``report_to`` where failures go; ``close`` at the run's end."""

    def __init__(
        self,
        hooks: Sequence[NotifyConfig],
        links: Links,
        pipeline: str = "",
        *,
        tries: int | None = None,
        backoff_s: float | None = None,
        timeout_s: float | None = None,
        post: Post = post_json,
        clock: Callable[[], float] = time.time,
    ):
        """``hooks``: the config's ``notify``; ``pipeline``: its name. ``tries``, ``backoff_s`` and
        ``timeout_s`` default to ``NOTIFY_TRIES``, ``NOTIFY_BACKOFF_S`` and ``NOTIFY_TIMEOUT_S``;
        ``post`` and ``clock`` are a test's to replace (``clock`` must be the records' own ``ts``
        clock: ``waiting`` compares the two)."""
        self._urls, self._alerts, self._links = [hook.url for hook in hooks], Alerts(hooks, pipeline), links
        self._tries = max(1, constants.NOTIFY_TRIES if tries is None else tries)
        self._backoff_s = constants.NOTIFY_BACKOFF_S if backoff_s is None else backoff_s
        self._timeout_s = constants.NOTIFY_TIMEOUT_S if timeout_s is None else timeout_s
        self._post, self._clock = post, clock
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._outboxes: list[queue.SimpleQueue[Any]] = [queue.SimpleQueue() for _ in self._urls]
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()  # guards what follows: a message is settled once, reports go out one at a time
        self._unsettled: list[_Message] = []
        self._report: Report | None = None
        self._early: list[dict[str, Any]] = []  # reports before ``report_to``
        self._closed = False
        self._giving_up = threading.Event()  # ``close``'s bound passed: senders stop trying

    @classmethod
    def of(cls, config: PipelineConfig, store: RunStore) -> Notifier | None:
        """The notifier of a run of ``config`` (None when it names no webhook)."""
        if not config.notify:
            return None
        return cls(config.notify, Links(config.storage, config.mlflow.tracking_uri, recorded_ids(store)), config.name)

    # --- the driver's side --------------------------------------------------------------------
    def start(self) -> None:
        self._threads = [threading.Thread(target=self._dispatch, name="rto-notify", daemon=True)]
        self._threads += [
            threading.Thread(target=self._send_all, args=(hook,), name=f"rto-notify-{hook}", daemon=True)
            for hook in range(len(self._urls))
        ]
        for thread in self._threads:
            thread.start()

    def consume(self, record: Mapping[str, Any]) -> None:
        """Take a recorded event (on the driver's thread): never waits."""
        self._inbox.put(record)

    def watching(self, on_event: EventSink) -> EventSink:
        """A sink that gives every record to this notifier and to ``on_event``."""

        def both(record: Mapping[str, Any]) -> None:
            self.consume(record)
            on_event(record)

        return both

    def report_to(self, report: Report) -> None:
        """Where messages that could not be sent are reported from now on (those reported before, too)."""
        with self._lock:
            self._report, early, self._early = report, self._early, []
            for fields in early:
                report(Event.NOTIFY_FAILED, **fields)

    def close(self, timeout_s: float | None = None) -> None:
        """Wait at most ``timeout_s`` (``NOTIFY_FLUSH_S``) for the messages still going out (the
        run's last events' included), then report each one left as not sent; reports stop here."""
        deadline = time.monotonic() + (constants.NOTIFY_FLUSH_S if timeout_s is None else timeout_s)
        if self._threads:
            dispatcher, *senders = self._threads
            self._inbox.put(_STOP)
            dispatcher.join(max(0.0, deadline - time.monotonic()))
            for outbox in self._outboxes:  # after the dispatcher queued its last deliveries
                outbox.put(_STOP)
            for sender in senders:
                sender.join(max(0.0, deadline - time.monotonic()))
        self._giving_up.set()
        with self._lock:
            left, self._unsettled = self._unsettled, []
            for message_ in left:
                self._tell(message_, UNSENT)
            self._closed = True

    # --- the dispatcher -----------------------------------------------------------------------
    def _dispatch(self) -> None:
        next_tick = self._clock() + TICK_S
        while True:
            try:
                record = self._inbox.get(timeout=TICK_S)
            except queue.Empty:
                record = None
            if record is _STOP:
                return
            try:
                if record is not None:
                    self._queue(self._alerts.consume(record))
                if (now := self._clock()) >= next_tick:
                    self._queue(self._alerts.tick(now))
                    next_tick = now + TICK_S
            except Exception:  # noqa: BLE001 — a bug of ours costs the alerts of one record, not the rest
                log.exception("notify: could not decide the alerts of %s", (record or {}).get("event", "a tick"))

    def _queue(self, deliveries: list[Delivery]) -> None:
        with self._lock:
            if self._closed:  # the driver is gone: nothing could report them any more
                return
            for delivery in deliveries:
                pending = _Message(delivery)
                self._unsettled.append(pending)
                self._outboxes[delivery.hook].put(pending)

    # --- a hook's sender ----------------------------------------------------------------------
    def _send_all(self, hook: int) -> None:
        outbox = self._outboxes[hook]
        while (pending := outbox.get()) is not _STOP:
            try:
                self._send(pending)
            except Exception as e:  # noqa: BLE001 — a bug of ours costs this message, not the hook's next ones
                log.exception("notify: could not send a %s alert", pending.delivery.alert.kind)
                self._settle(pending, gist(f"{type(e).__name__}: {e}"))

    def _send(self, pending: _Message) -> None:
        """Try the message until it is sent, refused, out of tries, or ``close`` gives up on it."""
        url = self._urls[pending.delivery.hook]
        body = json.dumps(message(pending.delivery.alert, self._links), default=str).encode()
        error = ""
        while pending.tries < self._tries and not self._giving_up.is_set():
            pending.tries += 1
            try:
                self._post(url, body, self._timeout_s)
                self._settle(pending, None)
                return
            except Exception as e:  # noqa: BLE001 — whatever the hook or the network did, the run goes on
                error = _error_line(e, url)
                if final(e):
                    break
            if pending.tries < self._tries and self._giving_up.wait(self._backoff_s * 2 ** (pending.tries - 1)):
                return  # ``close`` reports it
        self._settle(pending, error or UNSENT)

    def _settle(self, pending: _Message, error: str | None) -> None:
        """The message's end: sent (``error`` None) or not; once, whoever comes first."""
        with self._lock:
            if pending not in self._unsettled:  # ``close`` reported it already
                return
            self._unsettled.remove(pending)
            if error is not None:
                self._tell(pending, error)

    def _tell(self, pending: _Message, error: str) -> None:
        """Report a message not sent (the lock held: one report at a time, in order)."""
        alert: Alert = pending.delivery.alert
        fields = {
            "alert": alert.kind,
            "url": redact_url(self._urls[pending.delivery.hook]),
            "error": error,
            "tries": pending.tries,
            **({"step": alert.step} if alert.step else {}),
        }
        if self._report is None:
            self._early.append(fields)
            return
        try:
            self._report(Event.NOTIFY_FAILED, **fields)
        except Exception:  # noqa: BLE001 — a report that fails must not end the sender
            log.exception("notify: could not report a %s alert not sent to %s", alert.kind, fields["url"])


def _error_line(error: BaseException, url: str) -> str:
    """The one line of a failed try, with the webhook's URL (and its secret path) masked out."""
    if isinstance(error, urllib.error.HTTPError):
        text = f"HTTP {error.code}: {error.reason}"
    elif isinstance(error, urllib.error.URLError):
        text = f"{type(error.reason).__name__}: {error.reason}"
    else:
        text = f"{type(error).__name__}: {error}"
    parts = urllib.parse.urlsplit(url)
    secrets = tuple(s for s in (url, parts.path + (f"?{parts.query}" if parts.query else "")) if len(s) > 1)
    return gist(masked(text, secrets))
