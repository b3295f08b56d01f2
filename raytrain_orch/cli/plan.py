"""``rto validate`` and ``rto plan``: check a config and its pipeline, and show where its steps'
gangs fit, without running anything."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Mapping

from raytrain_orch.cli.command import Command, add_config_arguments, add_json_argument
from raytrain_orch.cli.format import table
from raytrain_orch.core.config import RayConfig
from raytrain_orch.core.errors import EXIT_INFEASIBLE, EXIT_OK
from raytrain_orch.core.placement import ClusterSpec, Feasibility, max_concurrent_trials, place
from raytrain_orch.core.plan import Plan

if TYPE_CHECKING:
    from raytrain_orch.engine.driver import Prepared


def cmd_validate(args: argparse.Namespace) -> int:
    from raytrain_orch.engine.driver import prepare

    prepared = prepare(args.config, args.set)
    steps = ", ".join(f"{s.name} ({s.kind})" for s in prepared.plan.steps)
    print(f"{args.config}: valid — pipeline {prepared.pipeline.name!r}, steps {steps}")
    return EXIT_OK


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--address", help="check against this Ray cluster (default: a local Ray)")
    add_json_argument(parser)


def cmd_plan(args: argparse.Namespace) -> int:
    from raytrain_orch.engine.driver import feasibility, prepare

    prepared = prepare(args.config, args.set)
    cluster, books, local = _cluster(prepared.config.ray, args.address)
    verdicts = feasibility(prepared.plan, cluster)
    now = _admission(prepared.plan, verdicts, cluster, books)
    if args.json:
        _print_json(prepared.plan, verdicts, now, cluster, books)
    else:
        _print_text(prepared, verdicts, now, cluster, books, local)
    return EXIT_OK if all(v.feasible for v in verdicts.values()) else EXIT_INFEASIBLE


def _cluster(ray_config: RayConfig, address: str | None) -> tuple[ClusterSpec, dict[str, Any] | None, bool]:
    """What the cluster offers, its admission queue's books (none for a local Ray), and whether
    it is a local Ray."""
    from raytrain_orch.ray import leases, session

    if session.is_local(ray_config, address):
        return session.local_cluster_spec(ray_config), None, True  # what a local Ray offers: no need to start one
    connection = session.connect(ray_config, address)
    try:
        return session.cluster_spec(), leases.admission_snapshot(), False
    finally:
        if connection.initialized:
            session.disconnect()


def _admission(
    plan: Plan, verdicts: Mapping[str, Feasibility], cluster: ClusterSpec, books: dict[str, Any] | None
) -> dict[str, str]:
    """Each step's admission now: infeasible, must-wait (the queue or what is free now), feasible."""
    free_now = books["free"] if books else cluster.nodes
    queued = bool(books and books["waiting"])
    return {
        step.name: "infeasible"
        if not verdicts[step.name].feasible
        else "must-wait"
        if queued or place(step.gang, free_now) is None
        else "feasible"
        for step in plan.steps
    }


def _print_json(
    plan: Plan,
    verdicts: Mapping[str, Feasibility],
    now: Mapping[str, str],
    cluster: ClusterSpec,
    books: dict[str, Any] | None,
) -> None:
    data: dict[str, Any] = plan.to_dict()
    for step, shown in zip(plan.steps, data["steps"], strict=True):
        verdict = verdicts[step.name]
        shown.update(feasible=verdict.feasible, admission=now[step.name], reason=verdict.reason)
    data["cluster"] = {"nodes": [dict(n) for n in cluster.nodes], "node_types": [vars(t) for t in cluster.node_types]}
    data["queue"] = books
    print(json.dumps(data, indent=2))


def _print_text(
    prepared: Prepared,
    verdicts: Mapping[str, Feasibility],
    now: Mapping[str, str],
    cluster: ClusterSpec,
    books: dict[str, Any] | None,
    local: bool,
) -> None:
    from raytrain_orch.cli.runs import runtime_status

    plan = prepared.plan
    print(f"pipeline {prepared.pipeline.name!r} on {cluster.describe()}")
    if local:
        print(runtime_status(prepared.config.ray))
    if books and (books["granted"] or books["waiting"]):
        print(f"admission queue: {len(books['granted'])} gang(s) running, {len(books['waiting'])} waiting")
    rows = [("STEP", "KIND", "AFTER", "GANG", "NOW")]
    for step in plan.steps:
        rows.append((step.name, step.describe_kind(), step.describe_after(), step.describe_gang(), now[step.name]))
    table(rows)
    for step in plan.steps:
        if step.map_over is not None:
            cap = step.map.max_concurrency if step.map and step.map.max_concurrency else "as many as admission allows"
            print(f"{step.name} map over {step.map_over}: one gang of {step.describe_gang()} per item, {cap} at once")
        if step.sweep is not None:
            sweep = step.sweep
            at_once = sweep.max_concurrent_trials or max_concurrent_trials(sweep, step.gang, cluster)
            print(
                f"sweep of {step.name}: {sweep.num_samples} trial(s) of its gang, {at_once} at a time; "
                f"{sweep.searcher} search, {sweep.scheduler} scheduler, best {sweep.mode} {sweep.metric}"
            )
    for verdict in verdicts.values():
        if not verdict.feasible:
            print(f"infeasible: {verdict.reason}", file=sys.stderr)


VALIDATE = Command(
    "validate", "check a config and its pipeline without running anything", add_config_arguments, cmd_validate
)
PLAN = Command(
    "plan",
    "print the DAG, each step's gang, and whether it is feasible, must wait, or is infeasible on the cluster",
    add_plan_arguments,
    cmd_plan,
)
