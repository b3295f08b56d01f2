"""What ``rto gc`` removes from the storage root: planned as plain data first (``plan``, what a
dry run prints), then removed (``apply``); and the pins that keep a run whatever the rule.

A collected run keeps its record under ``runs/RUN_ID/`` (``state.json``, its events,
``config.yaml``, ``plan.json``, its steps' logs), marked ``collected`` in ``state.json``, and
loses its heavy data:

- ``runs/RUN_ID/checkpoints/TRAIN_RUN/``: Ray Train's checkpoints of each train step;
- ``runs/RUN_ID/sweeps/SWEEP/``: a sweep's trials, their checkpoints and Tune's records;
- ``cache/STEP/KEY/``: the step outputs its steps produced or reused, once no kept run's steps
  reference them.

What a kept run still uses stays, even in a collected run's directory: a cached train step's
artifact points at the checkpoint of the run that trained it.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from raytrain_orch.core import constants
from raytrain_orch.store.checkpoint import train_run_name
from raytrain_orch.store.state import CACHE_DIR, RunState, RunStore, Status, cache_path

#: The directories of a run that hold its heavy data, each item in them removed whole.
CHECKPOINTS, SWEEPS = "checkpoints", "sweeps"
HEAVY_DIRS = (CHECKPOINTS, SWEEPS)
PIN_FILE = "pinned.json"
#: What a removal is, as the report words it.
CACHE = "cache"


@dataclass(frozen=True)
class Removal:
    """One directory to remove (``parts`` below the root), charged to run ``run_id``."""

    run_id: str
    what: str  # checkpoints, sweeps or cache
    parts: tuple[str, ...]
    size: int  # bytes


@dataclass(frozen=True)
class Held:
    """A collected run's item that stays because kept run ``user`` uses it."""

    run_id: str
    parts: tuple[str, ...]
    user: str


@dataclass(frozen=True)
class CollectionPlan:
    """What collecting ``runs`` removes, and what of theirs stays because a kept run uses it."""

    runs: tuple[str, ...]
    removals: tuple[Removal, ...]
    held: tuple[Held, ...]

    @property
    def size(self) -> int:
        return sum(r.size for r in self.removals)

    def of(self, run_id: str) -> list[Removal]:
        return [r for r in self.removals if r.run_id == run_id]


def plan(store: RunStore, runs: Sequence[RunState], collect: Collection[str]) -> CollectionPlan:
    """What collecting the runs ``collect`` (ids among ``runs``, every run of the root) removes:
    their heavy directories and their cache entries, less what the other runs still use. Of a
    run collected before, only what was kept then for a kept run is looked at again."""
    chosen = [r for r in runs if r.run_id in collect]
    uses = Uses.of(store, [r for r in runs if r.run_id not in collect])
    items: dict[tuple[str, ...], str] = {}  # what to look at → the run it is charged to
    for run in chosen:
        left = left_over(run)
        if left is not None:
            items.update(dict.fromkeys(left, run.run_id))
            continue
        for what in HEAVY_DIRS:
            for name in store.storage.listdir(*store.run_path(run.run_id, what)):
                items[store.run_path(run.run_id, what, name)] = run.run_id
    for parts, run_id in _entries([r for r in chosen if left_over(r) is None]).items():
        items.setdefault(parts, run_id)
    removals: list[Removal] = []
    held: list[Held] = []
    for parts, run_id in items.items():
        if user := uses.user(parts):
            held.append(Held(run_id, parts, user))
        elif (size := _size_if_there(store, parts)) is not None:
            removals.append(Removal(run_id, CACHE if parts[0] == CACHE_DIR else parts[2], parts, size))
    return CollectionPlan(tuple(r.run_id for r in chosen), tuple(removals), tuple(held))


def left_over(run: RunState) -> list[tuple[str, ...]] | None:
    """What of a collected run was kept for a kept run when it was collected; None when not
    known (not collected yet), so everything of it is looked at."""
    held = (run.collected or {}).get("held")
    return None if held is None else [tuple(path.split("/")) for path in held]


@dataclass(frozen=True)
class Uses:
    """What the kept runs use, each with one run that uses it: the cache entries of their steps,
    the checkpoints their artifacts point at (in whichever run trained them), and any run's
    checkpoints and sweeps named after their steps' cache keys (a step still to run may get a
    cache hit that points there)."""

    paths: dict[tuple[str, ...], str]
    names: dict[tuple[str, str], str]  # (checkpoints or sweeps, the item's name)

    @classmethod
    def of(cls, store: RunStore, kept: Sequence[RunState]) -> "Uses":
        uses = cls({}, {})
        for run in kept:
            for name, step in run.steps.items():
                if not step.cache_key:
                    continue
                uses.paths.setdefault(cache_path(name, step.cache_key), run.run_id)
                uses.names.setdefault((CHECKPOINTS, train_run_name(name, step.cache_key)), run.run_id)
                uses.names.setdefault((SWEEPS, f"{name}-{step.cache_key}"), run.run_id)
                checkpoint = (step.artifact or {}).get("checkpoint")
                if checkpoint and (item := _item_of(store, checkpoint)) is not None:
                    uses.paths.setdefault(item, run.run_id)
        return uses

    def user(self, parts: tuple[str, ...]) -> str | None:
        """A kept run that uses the item at ``parts``, or None."""
        if parts in self.paths:
            return self.paths[parts]
        return self.names.get((parts[2], parts[3])) if len(parts) == 4 and parts[0] == constants.RUNS_DIR else None


def _item_of(store: RunStore, uri: str) -> tuple[str, ...] | None:
    """The heavy item (``runs/RUN/checkpoints/NAME`` or ``…/sweeps/NAME``) that ``uri`` lies in."""
    path = store.storage.fs_path(uri)
    if path is None:
        return None
    parts = tuple(path[len(store.storage.base.rstrip("/")) :].strip("/").split("/"))
    if len(parts) >= 4 and parts[0] == constants.RUNS_DIR and parts[2] in HEAVY_DIRS:
        return parts[:4]
    return None


def _entries(runs: Sequence[RunState]) -> dict[tuple[str, ...], str]:
    """The cache entries the runs' steps reference, each charged to the run that computed it (or,
    when none of them did, the newest that reused it)."""
    charged: dict[tuple[str, ...], str] = {}
    computed = [(r, n, s) for r in runs for n, s in r.steps.items() if s.status is Status.SUCCEEDED]
    others = [(r, n, s) for r in runs for n, s in r.steps.items() if s.status is not Status.SUCCEEDED]
    for run, name, step in computed + others:
        if step.cache_key:
            charged.setdefault(cache_path(name, step.cache_key), run.run_id)
    return charged


def _size_if_there(store: RunStore, parts: tuple[str, ...]) -> int | None:
    """The bytes below ``parts``; None when nothing is there."""
    entries = store.storage.entries(*parts)
    return sum(size or 0 for size in entries.values()) if entries else None


def apply(store: RunStore, collection: CollectionPlan, runs: Sequence[RunState], now: float | None = None) -> list[str]:
    """Remove what ``collection`` plans, run by run, and mark each run collected in its record.
    A run whose record changed since it was planned (resumed meanwhile) is left alone; returns
    the ids of those."""
    planned = {r.run_id: r for r in runs}
    changed = []
    for run_id in collection.runs:
        removals = collection.of(run_id)
        held = ["/".join(h.parts) for h in collection.held if h.run_id == run_id]
        previous = planned[run_id].collected
        if previous is not None and not removals and previous.get("held") == held:
            continue  # collected before, and nothing has changed since
        current = store.load(run_id)
        if not current.status.terminal or current.ended_at != planned[run_id].ended_at:
            changed.append(run_id)
            continue
        for removal in removals:
            store.storage.remove_dir(*removal.parts)
        current.collected = {
            "at": time.time() if now is None else now,
            "freed_bytes": (previous or {}).get("freed_bytes", 0) + sum(r.size for r in removals),
            "held": held,
        }
        store.save(current)
    return changed


# --- pins ------------------------------------------------------------------------------------------


def pin(store: RunStore, run_id: str) -> None:
    """Keep run ``run_id`` from ``rto gc`` (a file in its directory: its driver never writes it)."""
    store.load(run_id)  # a clear error for a run that is not there
    store.storage.write_json({"at": time.time()}, *store.run_path(run_id, PIN_FILE))


def unpin(store: RunStore, run_id: str) -> bool:
    """Let ``rto gc`` collect run ``run_id`` again; whether it was pinned."""
    store.load(run_id)
    was = pinned(store, run_id)
    if was:
        store.storage.fs.delete_file(store.storage.path(*store.run_path(run_id, PIN_FILE)))
    return was


def pinned(store: RunStore, run_id: str) -> bool:
    return store.storage.exists(*store.run_path(run_id, PIN_FILE))
