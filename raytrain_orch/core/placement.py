"""Gangs and clusters as plain data, and where a gang fits: whether it can ever be placed on
a cluster (``check_gang``), where it fits on what is free now (``place``), and how many copies
fit at once (``copies``, ``max_concurrent_trials``).

Pure: no Ray, no I/O. A cluster is described as a list of per-node resource dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from raytrain_orch.core.sweep_config import SweepConfig

Bundle = dict[str, float]


@dataclass(frozen=True)
class GangSpec:
    """Bundles reserved together, all or nothing, with a Ray placement strategy."""

    bundles: tuple[Bundle, ...]
    strategy: str = "PACK"

    def total(self) -> Bundle:
        total: Bundle = {}
        for bundle in self.bundles:
            for key, amount in bundle.items():
                total[key] = total.get(key, 0.0) + amount
        return total

    def describe(self) -> str:
        groups: dict[str, int] = {}
        for bundle in self.bundles:
            text = "{" + ", ".join(f"{k}: {_num(v)}" for k, v in sorted(bundle.items())) + "}"
            groups[text] = groups.get(text, 0) + 1
        return " + ".join(f"{n} × {text}" for text, n in groups.items()) + f" {self.strategy}"


@dataclass(frozen=True)
class Feasibility:
    feasible: bool
    reason: str = ""


@dataclass(frozen=True)
class NodeType:
    """A kind of node an autoscaler can still add: its resources and how many more it may add."""

    resources: Bundle
    max_more: int  # -1: no limit


@dataclass(frozen=True)
class ClusterSpec:
    """What a cluster offers: one resource dict per node (totals, not what is free now), and the
    node types its autoscaler may still add."""

    nodes: tuple[Bundle, ...] = field(default_factory=tuple)
    node_types: tuple[NodeType, ...] = field(default_factory=tuple)

    def total(self) -> Bundle:
        return GangSpec(self.nodes).total()

    def grown(self, bundles: int) -> tuple[Bundle, ...]:
        """The nodes, plus as many of each addable node type as ``bundles`` bundles could use."""
        extra = [
            dict(t.resources)
            for t in self.node_types
            for _ in range(bundles if t.max_more < 0 else min(bundles, t.max_more))
        ]
        return (*self.nodes, *extra)

    def describe(self) -> str:
        total = self.total()
        shown = ", ".join(f"{k}: {_num(v)}" for k, v in sorted(total.items()) if not _is_internal(k))
        text = f"{len(self.nodes)} node(s) with {{{shown}}} in total"
        if self.node_types:
            growable = "; ".join(
                f"{'unlimited' if t.max_more < 0 else t.max_more} × {_fmt_bundle(t.resources)}" for t in self.node_types
            )
            text += f", autoscaling up to {growable} more"
        return text


def check_gang(step: str, gang: GangSpec, cluster: ClusterSpec) -> Feasibility:
    """Can ``gang`` ever be placed on ``cluster`` (counting nodes an autoscaler may add)?"""
    asked = gang.describe()
    nodes = cluster.grown(len(gang.bundles))
    whole = ClusterSpec(nodes)
    total = whole.total()
    for key, amount in gang.total().items():
        if amount <= 0:
            continue
        have = total.get(key, 0.0)
        if have == 0:
            return Feasibility(
                False, f"step {step} needs {asked}; the cluster has no {key} at all ({cluster.describe()})"
            )
        if amount > have + 1e-9:
            return Feasibility(
                False, f"step {step} needs {asked} ({_num(amount)} {key} in total); the cluster has {_num(have)} {key}"
            )
    if place(gang, nodes) is not None:
        return Feasibility(True)
    if gang.strategy == "STRICT_PACK":
        largest = {k: _num(max((n.get(k, 0.0) for n in nodes), default=0.0)) for k in gang.total()}
        return Feasibility(False, f"step {step} needs {asked} on one node; the largest node has {_fmt(largest)}")
    if gang.strategy == "STRICT_SPREAD":
        able = sum(1 for n in nodes if any(_fits(b, n) for b in gang.bundles))
        return Feasibility(
            False,
            f"step {step} needs {asked}, one bundle per node; only {able} node(s) can hold one ({whole.describe()})",
        )
    return Feasibility(
        False, f"step {step} needs {asked}; its bundles do not fit on the nodes of the cluster ({whole.describe()})"
    )


#: Placement is an exhaustive search up to this many tries; past it the search gives up and
#: reports no placement (only gangs of many mixed bundles on many mixed nodes get that far).
_SEARCH_LIMIT = 20_000


def place(gang: GangSpec, free: Sequence[Bundle]) -> list[int] | None:
    """The node index of each bundle of ``gang`` on nodes with ``free`` resources, or None if it
    cannot be placed there. Respects the strategy: STRICT_PACK on one node, STRICT_SPREAD on
    distinct nodes; PACK and SPREAD are preferences, so any placement will do.

    A depth-first search over bundles, largest first, that skips nodes whose free resources
    equal one already tried for the same bundle, so it stays fast on large uniform clusters.
    """
    if not gang.bundles:
        return []
    if gang.strategy == "STRICT_PACK":
        need = gang.total()
        node = next((i for i, n in enumerate(free) if _fits(need, n)), None)
        return None if node is None else [node] * len(gang.bundles)
    order = sorted(range(len(gang.bundles)), key=lambda i: -sum(gang.bundles[i].values()))
    left = [dict(n) for n in free]
    chosen: list[int] = [-1] * len(gang.bundles)
    tries = 0

    def search(depth: int) -> bool:
        nonlocal tries
        if depth == len(order):
            return True
        bundle = gang.bundles[order[depth]]
        seen: list[Bundle] = []
        for i, node in enumerate(left):
            if gang.strategy == "STRICT_SPREAD" and i in chosen:
                continue
            if not _fits(bundle, node) or node in seen:
                continue
            seen.append(dict(node))
            tries += 1
            _take(node, bundle, -1)
            chosen[order[depth]] = i
            if search(depth + 1):
                return True
            _take(node, bundle, +1)
            chosen[order[depth]] = -1
            if tries > _SEARCH_LIMIT:
                return False
        return False

    return chosen if search(0) else None


def max_concurrent_trials(sweep: SweepConfig, gang: GangSpec, cluster: ClusterSpec) -> int:
    """How many trials of ``sweep`` can train at once: copies of the swept step's gang the
    cluster holds (nodes it may still add included), at least 1 and at most ``num_samples``."""
    limit = sweep.num_samples * max(1, _grid_points(sweep))
    return max(1, copies(gang, cluster.grown(len(gang.bundles) * limit), limit))


def _grid_points(sweep: SweepConfig) -> int:
    points = 1
    for dimension in sweep.space.values():
        if dimension.kind == "grid":
            points *= len(dimension.value)
    return points


def copies(gang: GangSpec, nodes: Sequence[Bundle], limit: int) -> int:
    """How many copies of ``gang`` (at most ``limit``) ``nodes`` hold at once, each placed on
    what the ones before it left."""
    left = [dict(n) for n in nodes]
    count = 0
    while count < limit and (spots := place(gang, left)) is not None:
        for bundle, node in zip(gang.bundles, spots, strict=True):
            _take(left[node], bundle, -1)
        count += 1
    return count


def _take(node: Bundle, bundle: Bundle, sign: int) -> None:
    for key, amount in bundle.items():
        node[key] = node.get(key, 0.0) + sign * amount


def _fits(bundle: Bundle, node: Bundle) -> bool:
    return all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items() if v > 0)


def _is_internal(key: str) -> bool:
    return key.startswith("node:") or key in ("memory", "object_store_memory") or key.startswith("accelerator_type")


def _num(value: float) -> str:
    return f"{value:g}"


def _fmt_bundle(bundle: Bundle) -> str:
    return _fmt({k: _num(v) for k, v in bundle.items() if not _is_internal(k)})


def _fmt(resources: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(resources.items())) + "}"
