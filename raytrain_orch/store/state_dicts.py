"""A train step's state as torch sees it: live objects and plain values, sharded and consolidated.

``ctx.report(state=...)`` takes a mapping whose values are either

- live objects: ``torch.nn.Module`` (plain, DDP or FSDP2-sharded) and ``torch.optim.Optimizer``,
  saved with ``torch.distributed.checkpoint`` (DCP): every rank writes its own shard, and a
  checkpoint loads onto any world size;
- plain values (the epoch, a config dict, whole state dicts), saved as they are by rank 0.

The functions here need no process group except where they say so, and no Ray: the worker
side (``ray/checkpointing.py``) calls them inside a Ray Train worker, and a downstream step or
the register step calls ``consolidate`` on one process to get one plain state dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from raytrain_orch.store.checkpoint import SHARDS_DIR, VALUES_FILE

Live = torch.nn.Module | torch.optim.Optimizer


def is_live(value: Any) -> bool:
    return isinstance(value, (torch.nn.Module, torch.optim.Optimizer))


def split_state(state: Mapping[str, Any]) -> tuple[dict[str, Live], dict[str, Any]]:
    """``state`` as (its live modules and optimizers, its plain values)."""
    live = {name: value for name, value in state.items() if is_live(value)}
    return live, {name: value for name, value in state.items() if name not in live}


def sharded_tensor_in(values: Mapping[str, Any]) -> str | None:
    """The name of a plain value holding a sharded tensor (a DTensor: an FSDP model's own
    ``state_dict()``), which rank 0 alone cannot save whole; None when there is none."""
    from torch.distributed.tensor import DTensor

    for name, value in values.items():
        if isinstance(value, DTensor) or (
            isinstance(value, Mapping) and any(isinstance(v, DTensor) for v in value.values())
        ):
            return name
    return None


def _module_of(optimizer: torch.optim.Optimizer, live: Mapping[str, Live]) -> torch.nn.Module:
    """The module in ``live`` whose parameters ``optimizer`` updates (DCP keys an optimizer's
    state by the module's parameter names, so it needs it)."""
    params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for module in live.values():
        if isinstance(module, torch.nn.Module) and any(id(p) in params for p in module.parameters()):
            return module
    raise ValueError(
        "an optimizer in the state updates parameters of no module in it; put its model in the state too, "
        'e.g. state={"model": model, "optimizer": optimizer, ...}'
    )


def state_dicts(live: Mapping[str, Live]) -> dict[str, Any]:
    """Each live object's state dict, keyed by parameter names without wrapper prefixes
    (``module.`` of DDP): sharded tensors (DTensors) under FSDP, whole ones otherwise."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {
        name: get_model_state_dict(obj)
        if isinstance(obj, torch.nn.Module)
        else get_optimizer_state_dict(_module_of(obj, live), obj)
        for name, obj in live.items()
    }


def load_into(live: Mapping[str, Live], loaded: Mapping[str, Any], full: bool = False) -> None:
    """Put ``loaded`` (what ``state_dicts`` gave, filled from a checkpoint; or whole state dicts
    when ``full``) into the live objects."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=full)
    for name, obj in live.items():
        if isinstance(obj, torch.nn.Module):
            set_model_state_dict(obj, loaded[name], options=options)
    for name, obj in live.items():  # after the modules: an optimizer's state follows its parameters
        if isinstance(obj, torch.optim.Optimizer):
            set_optimizer_state_dict(_module_of(obj, live), obj, loaded[name], options=options)


def consolidate(checkpoint_dir: Path, map_location: str = "cpu") -> dict[str, Any]:
    """A sharded checkpoint as one plain state dict on this process (no process group needed):
    its plain values, and each live object's whole state dict (a module's by parameter name,
    loadable into the plain model with ``load_state_dict``; an optimizer's keyed by parameter
    names too). It reads the shards as DCP's own conversion (``format_utils.dcp_to_torch_save``)
    does, in memory and without a process group, also where one is initialised."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    shards: dict[str, Any] = {}
    _load_state_dict(
        shards,
        storage_reader=FileSystemReader(checkpoint_dir / SHARDS_DIR),
        planner=_EmptyStateDictLoadPlanner(),
        no_dist=True,
    )
    values = torch.load(checkpoint_dir / VALUES_FILE, map_location=map_location, weights_only=True)
    return {**values, **shards}
