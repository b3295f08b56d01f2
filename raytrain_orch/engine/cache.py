"""The step cache as a run sees it: an earlier identical step's stored output, and the steps a
run must compute whatever the cache holds (``--no-cache``, ``--rerun`` and what depends on them)."""

from __future__ import annotations

import difflib
from typing import Collection

from raytrain_orch.core.errors import ConfigError
from raytrain_orch.core.plan import Plan, StepPlan
from raytrain_orch.store.artifacts import MANIFEST, Artifact, missing
from raytrain_orch.store.state import RunStore, cache_path


def cached_output(store: RunStore, step: StepPlan, discard_stale: bool = False) -> Artifact | None:
    """The stored output of an earlier identical step, if complete: its manifest (written last)
    and every table, dataset, file and checkpoint it lists are there (one listing of the entry,
    not a read of its files). An entry with parts gone (``rto gc``, a lifecycle rule, a hand)
    is no hit: the step is computed again, and with ``discard_stale`` the entry goes first so
    the new output replaces it whole."""
    path = cache_path(step.name, step.cache_key)
    present = store.storage.entries(*path)
    if MANIFEST not in present:
        return None
    artifact = Artifact.from_dict(store.storage.read_json(*path, MANIFEST))
    if missing(artifact, present, store.storage) is None:
        return artifact
    if discard_stale:
        store.storage.remove_dir(*path)
    return None


def forced_steps(plan: Plan, use_cache: bool, rerun: Collection[str]) -> set[str]:
    """Steps that must run even with a cache hit: all without the cache, else the rerun ones
    and everything downstream of them."""
    names = [s.name for s in plan.steps]
    if not use_cache:
        return set(names)
    for name in rerun:
        if name not in names:
            hint = difflib.get_close_matches(name, names, n=1)
            raise ConfigError(
                f"--rerun {name!r}: no such step" + (f"; did you mean {hint[0]!r}?" if hint else f"; steps are {names}")
            )
    forced = set(rerun)
    for name in rerun:
        forced |= plan.downstream(name)
    return forced


def steps_to_compute(plan: Plan, store: RunStore, use_cache: bool = True, rerun: Collection[str] = ()) -> list[str]:
    """The steps a run must execute: those forced, and those with no stored identical output."""
    forced = forced_steps(plan, use_cache, rerun)
    return [s.name for s in plan.steps if s.name in forced or cached_output(store, s) is None]
