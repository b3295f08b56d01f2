"""A run's event log on a local disk (one appended line per event) and on an object store
(buffered, flushed as numbered segments, merged): what a reader gets back, what was written.

The object store here is a local directory behind a counting pyarrow filesystem
(``tests/counting_fs.py``): ``Storage`` treats it as it treats S3 (whole objects, no append),
and it counts every byte written. tests/integration/test_eventlog_s3.py runs a real S3 API.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from raytrain_orch.core import constants
from raytrain_orch.store import eventlog, segments
from raytrain_orch.store.eventlog import EventLog
from raytrain_orch.store.segments import Segment
from raytrain_orch.store.state import RunState, RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.counting_fs import count_writes

RUN = ("runs", "r1")
EVENTS = (*RUN, constants.EVENTS_DIR)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def local(tmp_path) -> Storage:
    return Storage(str(tmp_path / "root"))


@pytest.fixture
def bucket(tmp_path) -> Storage:
    """An object store: a directory reached through a filesystem that is not a local one."""
    storage = Storage(str(tmp_path / "bucket"))
    count_writes(storage)
    return storage


def line(n: int) -> str:
    return json.dumps({"event": "epoch", "epoch": n})


def numbers(storage: Storage) -> list[int]:
    return [json.loads(text)["epoch"] for text in eventlog.read(storage, RUN)]


def names(storage: Storage) -> list[str]:
    return storage.listdir(*EVENTS)


def writer(storage: Storage, **options) -> EventLog:
    return EventLog(storage, RUN, background=False, **{"clock": Clock(), **options})


# --- a local disk --------------------------------------------------------------------------------


def test_on_a_local_disk_each_event_is_one_line_of_events_jsonl_at_once(local):
    log = writer(local)

    for n in range(3):
        log.append(line(n))
        assert numbers(local) == list(range(n + 1))  # no buffer: there before append returns

    assert local.read_bytes(*RUN, "events.jsonl").decode() == "".join(line(n) + "\n" for n in range(3))
    assert not local.exists(*EVENTS)


def test_a_line_still_being_written_is_left_out(local):
    local.write_bytes((line(0) + "\n" + line(1)[:9]).encode(), *RUN, "events.jsonl")

    assert numbers(local) == [0]


# --- an object store ---------------------------------------------------------------------------


def test_events_wait_in_the_buffer_until_a_flush_writes_them_as_one_segment(bucket):
    log = writer(bucket)

    for n in range(5):
        log.append(line(n))
    assert numbers(bucket) == []
    log.flush()

    assert numbers(bucket) == [0, 1, 2, 3, 4]
    assert names(bucket) == ["00000000-00000000.jsonl"]
    log.flush()  # nothing buffered: no empty segment
    assert names(bucket) == ["00000000-00000000.jsonl"]


def test_the_buffer_is_written_when_it_holds_max_events(bucket):
    log = writer(bucket, max_events=3)

    for n in range(7):
        log.append(line(n))

    assert numbers(bucket) == [0, 1, 2, 3, 4, 5]  # two full buffers; the seventh event waits
    assert names(bucket) == ["00000000-00000000.jsonl", "00000001-00000001.jsonl"]


def test_the_buffer_is_written_once_its_first_event_is_max_age_old(bucket):
    clock = Clock()
    log = writer(bucket, clock=clock, max_age_s=1.0)

    log.append(line(0))
    clock.now = 0.6
    log.append(line(1))
    assert not log.flush_if_due() and numbers(bucket) == []
    clock.now = 1.0  # a second after the first event, whatever came since

    assert log.flush_if_due()
    assert numbers(bucket) == [0, 1]
    clock.now = 5.0
    assert not log.flush_if_due()  # an empty buffer is never due


def test_the_log_s_thread_writes_an_idle_buffer_on_time(bucket):
    before = set(threading.enumerate())  # other tests' logs may still have theirs
    log = EventLog(bucket, RUN, max_age_s=0.05)
    try:
        log.append(line(0))  # and nothing after it
        deadline = time.monotonic() + 10
        while not numbers(bucket) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert numbers(bucket) == [0]
    finally:
        log.close()
    assert not any(t.name == "rto-event-log" for t in set(threading.enumerate()) - before)


def test_segments_are_merged_fan_out_at_a_time_into_two_levels(bucket):
    log = writer(bucket, max_events=1, fan_out=3)

    for n in range(13):  # thirteen flushes: 0-8 in level 2, 9-11 in level 1, 12 on its own
        log.append(line(n))

    assert names(bucket) == ["00000000-00000008.jsonl", "00000009-00000011.jsonl", "00000012-00000012.jsonl"]
    assert numbers(bucket) == list(range(13))


def test_bytes_written_are_at_most_three_times_the_log_s_size(tmp_path):
    storage = Storage(str(tmp_path / "bucket"))
    counting = count_writes(storage)
    log = writer(storage, max_events=1, fan_out=3)

    for n in range(200):
        log.append(line(n))
    log.close()

    size = sum(len(text) + 1 for text in eventlog.read(storage, RUN))
    assert numbers(storage) == list(range(200))
    assert size < counting.written("/events/") <= 3 * size
    # not 200 objects to read: one per 3² flushes, and fewer than 3 of each level below
    assert len(names(storage)) <= 200 // 3**2 + 2 * (3 - 1)


def test_a_merge_interrupted_before_its_parts_were_removed_reads_each_event_once(bucket):
    log = writer(bucket, max_events=1, fan_out=100)
    for n in range(5):
        log.append(line(n))
    parts = [bucket.read_bytes(*EVENTS, s) for s in names(bucket)]
    bucket.write_bytes(b"".join(parts[:3]), *EVENTS, "00000000-00000002.jsonl")  # a crash left 0, 1, 2 too

    assert numbers(bucket) == [0, 1, 2, 3, 4]
    assert segments.cover(segments.listing(bucket, EVENTS)) == [Segment(0, 2), Segment(3, 3), Segment(4, 4)]


def test_a_new_writer_numbers_on_from_the_last_segment_and_removes_what_a_crash_left(bucket):
    first = writer(bucket, max_events=1)
    for n in range(3):
        first.append(line(n))
    bucket.write_bytes(
        b"".join(bucket.read_bytes(*EVENTS, s) for s in names(bucket)), *EVENTS, "00000000-00000002.jsonl"
    )

    resumed = writer(bucket, max_events=1)  # the next driver of the run (rto resume)
    resumed.append(line(3))

    assert names(bucket) == ["00000000-00000002.jsonl", "00000003-00000003.jsonl"]
    assert numbers(bucket) == [0, 1, 2, 3]


def test_a_reader_that_listed_a_part_merged_away_since_lists_again(bucket, monkeypatch):
    log = writer(bucket, max_events=1, fan_out=3)
    for n in range(2):
        log.append(line(n))
    stale = segments.listing(bucket, EVENTS)  # what a reader listed, just before the merge
    log.append(line(2))  # the third flush: 0-2 merged, its parts removed
    listings = iter([stale])
    listing = segments.listing
    monkeypatch.setattr(segments, "listing", lambda *a: next(listings, None) or listing(*a))

    assert numbers(bucket) == [0, 1, 2]


def test_a_log_written_before_segments_is_read_first(bucket):
    bucket.write_bytes("".join(line(n) + "\n" for n in range(2)).encode(), *RUN, "events.jsonl")  # the old driver's
    log = writer(bucket)
    log.append(line(2))
    log.flush()

    assert numbers(bucket) == [0, 1, 2]


def test_a_failed_write_keeps_the_events_and_raises(bucket, monkeypatch):
    log = writer(bucket)
    log.append(line(0))
    write_chunks = Storage.write_chunks

    def unreachable(self, chunks, *parts):
        raise OSError("the store cannot be reached")

    monkeypatch.setattr(Storage, "write_chunks", unreachable)
    with pytest.raises(OSError, match="cannot be reached"):
        log.flush()
    monkeypatch.setattr(Storage, "write_chunks", write_chunks)
    log.append(line(1))
    log.flush()

    assert numbers(bucket) == [0, 1]


# --- the run store ------------------------------------------------------------------------------


def test_saving_the_state_writes_the_events_before_it(bucket):
    store = RunStore(bucket)
    state = RunState(run_id="r1", name="x", pipeline="p", config_hash="h", status=Status.RUNNING)
    store.append_event("r1", {"event": "run_started"})
    reader = RunStore(bucket)  # `rto status` in another process
    assert reader.events("r1") == []

    store.save(state)

    assert [e["event"] for e in reader.events("r1")] == ["run_started"]
    assert reader.load("r1").status is Status.RUNNING


def test_the_writer_reads_its_own_buffered_events_and_close_writes_the_rest(bucket):
    store = RunStore(bucket)
    store.append_event("r1", {"event": "run_started"})

    assert [e["event"] for e in store.events("r1")] == ["run_started"]  # e.g. the learning curves
    store.append_event("r1", {"event": "tracking_flushing", "pending": 1})
    store.close()
    assert [e["event"] for e in RunStore(bucket).events("r1")] == ["run_started", "tracking_flushing"]
