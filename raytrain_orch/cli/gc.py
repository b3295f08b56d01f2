"""``rto gc``, ``rto pin`` and ``rto unpin``: what a storage root keeps of its finished runs.

``rto gc`` decides which runs go (``store/retention.py``), keeps pinned runs and those a
registered MLflow model version comes from, plans what that frees (``store/collection.py``),
prints it, and, unless ``--dry-run``, removes it. A collected run keeps its record and shows in
``rto runs`` as collected.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from raytrain_orch.cli.command import Command, add_json_argument, add_run_id_argument, add_storage_argument
from raytrain_orch.cli.format import table
from raytrain_orch.core.errors import EXIT_OK, TrackingUnavailableError
from raytrain_orch.core.events import Event
from raytrain_orch.core.text import byte_size, gist
from raytrain_orch.store import collection
from raytrain_orch.store.retention import BestMetric, RetentionRule, decide
from raytrain_orch.store.state import RunState, RunStore
from raytrain_orch.store.storage import Storage


def cmd_gc(args: argparse.Namespace) -> int:
    rule = RetentionRule(  # a ConfigError: a one-line usage error (exit 2)
        keep_last=args.keep_last,
        older_than_days=args.older_than,
        keep_best=BestMetric.parse(args.keep_best) if args.keep_best else None,
    )
    store = RunStore(Storage(args.storage))
    runs, now = store.list(), time.time()
    collect = decide(runs, rule, now).collect
    # Only runs with something left to remove are checked for pins and registered models.
    candidates = [r for r in runs if r.run_id in collect and collection.left_over(r) != []]
    protected = {r.run_id: "pinned" for r in candidates if collection.pinned(store, r.run_id)}
    registered, notes = registered_models(store, [r for r in candidates if r.run_id not in protected])
    decision = decide(runs, rule, now, {**protected, **registered})
    planned = collection.plan(store, runs, decision.collect)
    changed = [] if args.dry_run else collection.apply(store, planned, runs, now)
    report = _report(runs, decision.kept, planned, changed, notes, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return EXIT_OK


def registered_models(store: RunStore, runs: Sequence[RunState]) -> tuple[dict[str, str], list[str]]:
    """The runs a registered MLflow model version comes from, each with the version; asked of
    each run's own tracking store. Where a store does not answer, its runs that registered a
    model (by their record) are kept instead, and a note says so."""
    from raytrain_orch.tracking.registry import registered

    by_store: dict[str, list[RunState]] = defaultdict(list)
    for run in runs:
        if run.mlflow.get("tracking_uri"):
            by_store[run.mlflow["tracking_uri"]].append(run)
    found: dict[str, str] = {}
    notes: list[str] = []
    for uri, tracked in by_store.items():
        run_uris = {r.run_id: store.storage.uri(*store.run_path(r.run_id)) for r in tracked}
        try:
            found.update(registered(uri, tracked, run_uris))
        except TrackingUnavailableError as e:
            kept = {r.run_id: "registered a model (MLflow unreachable)" for r in tracked if _registers(store, r)}
            found.update(kept)
            notes.append(f"{gist(e)}: kept {len(kept)} run(s) that registered a model rather than check")
    return found, notes


def _registers(store: RunStore, run: RunState) -> bool:
    """Whether the run's record says it registered a model: a ``model_registered`` event, or a
    register step (records written before that event existed)."""
    if any(name.startswith("register") for name in run.steps):
        return True
    return any(record.get("event") == Event.MODEL_REGISTERED for record in store.events(run.run_id))


def _report(
    runs: Sequence[RunState],
    kept: Mapping[str, str],
    planned: collection.CollectionPlan,
    changed: list[str],
    notes: list[str],
    dry_run: bool,
) -> dict[str, Any]:
    """What ``rto gc`` did or would do, as plain data (``--json`` prints it as it is)."""
    rows = []
    for run in runs:
        removals = planned.of(run.run_id)
        row: dict[str, Any] = {"run_id": run.run_id, "pipeline": run.pipeline}
        if run.run_id in kept:
            row.update(action="keep", why=kept[run.run_id])
        elif run.run_id in changed:
            row.update(action="skip", why="its record changed meanwhile (resumed?)")
        elif run.collected is not None and not removals:
            row.update(action="collected before")
        else:
            row.update(action="collect", bytes=sum(r.size for r in removals))
            row["removed"] = [{"what": r.what, "path": "/".join(r.parts), "bytes": r.size} for r in removals]
        rows.append(row)
    freed = sum(r["bytes"] for r in rows if r["action"] == "collect")
    held = [{"run_id": h.run_id, "path": "/".join(h.parts), "used_by": h.user} for h in planned.held]
    return {"dry_run": dry_run, "runs": rows, "held": held, "notes": notes, "freed_bytes": freed}


def _print(report: dict[str, Any]) -> None:
    verb = "would free" if report["dry_run"] else "freed"
    rows = [("RUN", "PIPELINE", "GC", "WHAT", "SIZE")]
    for row in report["runs"]:
        if row["action"] == "collect":
            action = "would collect" if report["dry_run"] else "collected"
            rows.append((row["run_id"], row["pipeline"], action, _what(row["removed"]), byte_size(row["bytes"])))
        elif row["action"] != "collected before":
            rows.append((row["run_id"], row["pipeline"], row["action"], row["why"], "-"))
    if len(rows) > 1:
        table(rows)
    earlier = sum(1 for r in report["runs"] if r["action"] == "collected before")
    if earlier:
        print(f"{earlier} run(s) collected earlier, nothing of theirs left to free")
    for item in report["held"]:
        if not item["path"].startswith(collection.CACHE):
            print(f"kept {item['path']}: run {item['used_by']} uses it")
    for note in report["notes"]:
        print(f"rto gc: {note}")
    collected = sum(1 for r in report["runs"] if r["action"] == "collect")
    print(f"{verb} {byte_size(report['freed_bytes'])} ({report['freed_bytes']} bytes) from {collected} run(s)")


#: How the report counts each kind of item: singular, plural.
_KINDS = MappingProxyType(
    {
        collection.CHECKPOINTS: ("train run's checkpoints", "train runs' checkpoints"),
        collection.SWEEPS: ("sweep", "sweeps"),
        collection.CACHE: ("cache entry", "cache entries"),
    }
)


def _what(removed: list[dict[str, Any]]) -> str:
    """``1 train run's checkpoints, 3 cache entries``: what a run loses, counted by kind."""
    counts: dict[str, int] = defaultdict(int)
    for item in removed:
        counts[item["what"]] += 1
    return ", ".join(f"{n} {_KINDS[what][n != 1]}" for what, n in counts.items()) or "nothing left"


def cmd_pin(args: argparse.Namespace) -> int:
    collection.pin(RunStore(Storage(args.storage)), args.run_id)
    print(f"run {args.run_id} pinned: rto gc keeps it whole (`rto unpin {args.run_id}` to let it go)")
    return EXIT_OK


def cmd_unpin(args: argparse.Namespace) -> int:
    was = collection.unpin(RunStore(Storage(args.storage)), args.run_id)
    print(f"run {args.run_id} unpinned" if was else f"run {args.run_id} was not pinned")
    return EXIT_OK


def add_gc_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-last", type=int, metavar="N", help="keep the N newest finished runs of each pipeline")
    parser.add_argument(
        "--older-than", type=float, metavar="DAYS", help="collect only runs that ended more than DAYS ago"
    )
    parser.add_argument(
        "--keep-best",
        metavar="METRIC",
        help="keep each pipeline's best run by a step metric: METRIC or STEP.METRIC, highest wins; min:METRIC for "
        "lowest (e.g. evaluate.test_accuracy, min:train.val_loss)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would be freed and change nothing")
    add_json_argument(parser)
    add_storage_argument(parser)


def add_pin_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_id_argument(parser)
    add_storage_argument(parser)


GC = Command(
    "gc",
    "remove old runs' checkpoints, artifacts and cache entries (their records stay); never a run in progress, a "
    "pinned one, or one with a registered model",
    add_gc_arguments,
    cmd_gc,
)
PIN = Command("pin", "keep a run whole whatever rto gc is told", add_pin_arguments, cmd_pin)
UNPIN = Command("unpin", "let rto gc collect a pinned run again", add_pin_arguments, cmd_unpin)
