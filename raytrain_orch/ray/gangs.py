"""Gangs as Ray placement groups: a task step's gang reserved all or nothing, and the
``.options()`` that ask for exactly one bundle's resources."""

from __future__ import annotations

import contextlib
from typing import Iterator

from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

from raytrain_orch.core import constants
from raytrain_orch.core.errors import SchedulingTimeoutError
from raytrain_orch.core.placement import GangSpec


def bundle_options(bundle: dict[str, float]) -> dict:
    """``.options()`` keyword arguments asking for exactly one bundle's resources."""
    custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU", "memory")}
    options = {"num_cpus": bundle.get("CPU", 0), "num_gpus": bundle.get("GPU", 0), "resources": custom}
    if "memory" in bundle:
        options["memory"] = bundle["memory"]
    return options


@contextlib.contextmanager
def reserved(gang: GangSpec, name: str, timeout_s: float = constants.GANG_TIMEOUT_S) -> Iterator[PlacementGroup]:
    """Reserve ``gang`` as one placement group; always remove it on exit."""
    group = placement_group([dict(b) for b in gang.bundles], strategy=gang.strategy, name=name)
    try:
        if not group.wait(timeout_seconds=timeout_s):
            raise SchedulingTimeoutError(
                f"{name}: gang {gang.describe()} was admitted but Ray did not place it within {timeout_s:g} s; "
                "work outside raytrain_orch holds the cluster — free it, or raise RTO_GANG_TIMEOUT_S"
            )
        yield group
    finally:
        remove_placement_group(group)
