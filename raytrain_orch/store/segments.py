"""A run's event log on an object store, as objects: immutable segments under ``runs/RUN/events/``.

An object store has no append, so each flush of the driver's buffer is a new object, named by
the range of flush numbers it holds: ``00000007-00000007.jsonl`` is the eighth flush. Every
``FAN_OUT`` flushes are merged into one object (``00000000-00000099.jsonl``), and every
``FAN_OUT`` of those into one more (``00000000-00009999.jsonl``), so a reader lists and opens
few objects and each event's bytes are written at most three times. A merged object is written
before its parts are removed: a reader takes the widest segments that do not overlap
(``cover``), so the parts a crash left behind are never read twice.
"""

from __future__ import annotations

import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator

from raytrain_orch.store.storage import Storage

#: How many segments of one level are merged into one of the next.
FAN_OUT = 100
#: Merged levels: flushes are merged once into level 1, and level 1's once into level 2.
LEVELS = 2
#: Objects read at once.
READERS = 8

_NAME = re.compile(r"^(\d+)-(\d+)\.jsonl$")


@dataclass(frozen=True, order=True)
class Segment:
    """The object that holds flushes ``first`` to ``last``."""

    first: int
    last: int

    @classmethod
    def parse(cls, name: str) -> Segment | None:
        """The segment a name stands for; None for any other object (it is left alone)."""
        match = _NAME.match(name)
        if match is None:
            return None
        first, last = int(match[1]), int(match[2])
        return cls(first, last) if first <= last else None

    @property
    def name(self) -> str:
        return f"{self.first:08d}-{self.last:08d}.jsonl"

    @property
    def width(self) -> int:
        return self.last - self.first + 1


def listing(storage: Storage, directory: tuple[str, ...]) -> list[Segment]:
    """Every segment in ``directory``, in no particular order."""
    return [s for name in storage.listdir(*directory) if (s := Segment.parse(name)) is not None]


def cover(segments: Iterable[Segment]) -> list[Segment]:
    """The segments to read, in order: where they overlap, the widest (a merged one, over the
    parts a crash left behind before they were removed)."""
    chosen: list[Segment] = []
    end = -1
    for segment in sorted(segments, key=lambda s: (s.first, -s.last)):
        if segment.first > end:
            chosen.append(segment)
            end = segment.last
    return chosen


def read(storage: Storage, directory: tuple[str, ...], segments: list[Segment]) -> list[bytes]:
    """The segments' contents, in their order, read at once."""
    if len(segments) <= 1:
        return [storage.read_bytes(*directory, s.name) for s in segments]
    with ThreadPoolExecutor(max_workers=min(READERS, len(segments)), thread_name_prefix="rto-events") as pool:
        return list(pool.map(lambda s: storage.read_bytes(*directory, s.name), segments))


Merge = tuple[Segment, list[Segment]]


def plan(segments: Iterable[Segment], next_flush: int, fan_out: int = FAN_OUT) -> tuple[list[Merge], list[Segment]]:
    """What compaction does: the merges due (a complete group of ``fan_out`` segments of a level,
    lower levels first), and the parts a merged segment already holds (left by a crash)."""
    segments = set(segments)
    live = set(cover(segments))
    merges: list[Merge] = []
    for level in range(1, LEVELS + 1):
        size = fan_out**level
        groups: dict[int, list[Segment]] = defaultdict(list)
        for segment in live:
            if segment.width < size:
                groups[segment.first // size].append(segment)
        for number, members in sorted(groups.items()):
            group = Segment(number * size, (number + 1) * size - 1)
            if group.last < next_flush and len(members) > 1:
                merges.append((group, sorted(members)))
                live.difference_update(members)
                live.add(group)
    return merges, sorted(segments - set(cover(segments)))


def compact(storage: Storage, directory: tuple[str, ...], next_flush: int, fan_out: int = FAN_OUT) -> int:
    """Merge what ``plan`` says is due, then remove the parts merged ones hold; return the bytes written."""
    merges, leftovers = plan(listing(storage, directory), next_flush, fan_out)
    written = 0
    for group, members in merges:
        written += storage.write_chunks(_contents(storage, directory, members), *directory, group.name)
        leftovers.extend(members)
    for segment in leftovers:
        storage.remove_file(*directory, segment.name)
    return written


def _contents(storage: Storage, directory: tuple[str, ...], members: list[Segment]) -> Iterator[bytes]:
    for member in members:  # one at a time: a merged segment is never whole in memory
        yield storage.read_bytes(*directory, member.name)
