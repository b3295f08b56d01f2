"""How ``ctx.prepare_model`` distributes a model: DDP (every worker holds all of it) or FSDP2
(``torch.distributed.fsdp.fully_shard``: parameters, gradients and optimizer state sharded
across the workers, each block gathered only while it computes)."""

from __future__ import annotations

from types import MappingProxyType

import ray.train.torch
import torch
import torch.distributed as dist

from raytrain_orch.core.strategy import StrategyOptions

_DTYPES = MappingProxyType({"float32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16})


def prepare_model(
    model: torch.nn.Module, strategy: str, options: StrategyOptions | None, device: torch.device
) -> torch.nn.Module:
    """``model`` on ``device``, wrapped in DDP or sharded with FSDP2 as the step's ``strategy`` says."""
    if strategy == "fsdp":
        return shard(model, options or StrategyOptions(), device)
    return ray.train.torch.prepare_model(model, move_to_device=device)


def blocks(model: torch.nn.Module, classes: tuple[str, ...] = ()) -> list[torch.nn.Module]:
    """The modules FSDP shards one by one before the root, outermost first: those of the
    ``classes`` named, or else every entry of every ``torch.nn.ModuleList`` (a transformer's
    layers). A block inside another block is part of it."""
    found: list[tuple[str, torch.nn.Module]] = []
    for name, module in model.named_modules():
        if any(name.startswith(f"{outer}.") for outer, _ in found):
            continue
        if classes:
            if type(module).__name__ in classes and module is not model:
                found.append((name, module))
        elif isinstance(module, torch.nn.ModuleList):
            found.extend((f"{name}.{index}" if name else str(index), child) for index, child in enumerate(module))
    if classes and not found:
        present = sorted({type(m).__name__ for m in model.modules()})
        raise ValueError(
            f"strategy_options.shard_modules {list(classes)} names no module of {type(model).__name__}; "
            f"its module classes are {present}"
        )
    return [module for _, module in found]


def shard(model: torch.nn.Module, options: StrategyOptions, device: torch.device) -> torch.nn.Module:
    """FSDP2: each block, then the root, over a 1-D mesh of all workers (gloo on CPU, NCCL on GPUs).
    The model stays the user's class: ``model(x)``, ``model.parameters()`` and its attributes work
    as before, and the optimizer is built over the sharded parameters."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model.to(device)
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    mesh = init_device_mesh(device.type, (world_size,))
    precision = MixedPrecisionPolicy(
        param_dtype=_DTYPES[options.mixed_precision] if options.mixed_precision else None,
        reduce_dtype=_DTYPES[options.reduce_dtype] if options.mixed_precision else None,
    )
    for block in blocks(model, options.shard_modules):
        fully_shard(block, mesh=mesh, reshard_after_forward=options.reshard_after_forward, mp_policy=precision)
    # The root's own parameters (embeddings, head) are used last in the backward pass: keeping them
    # gathered after the forward pass saves one all-gather per step.
    fully_shard(model, mesh=mesh, reshard_after_forward=False, mp_policy=precision)
    return model
