"""A train step's ``strategy_options``: how ``strategy: fsdp`` shards its model. Pure: the
``ray/strategy.py`` adapter applies them with torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StrategyOptions(BaseModel):
    """How ``strategy: fsdp`` shards a model (FSDP2, ``torch.distributed.fsdp.fully_shard``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mixed_precision: Literal["bf16", "fp16"] | None = Field(
        None,
        description="Compute in this dtype (FSDP's MixedPrecisionPolicy param_dtype); the sharded parameters, the "
        "optimizer state and the checkpoints stay float32 (null: float32 throughout).",
    )
    reduce_dtype: Literal["float32", "bf16", "fp16"] = Field(
        "float32", description="The dtype gradients are reduced in under mixed precision."
    )
    reshard_after_forward: bool = Field(
        True,
        description="Free each block's gathered parameters after its forward pass (less memory; gathered again "
        "for the backward pass). false keeps them until the backward pass: faster, more memory.",
    )
    shard_modules: tuple[str, ...] = Field(
        (),
        description="Class names of the modules sharded one by one (the model's blocks), before the root; "
        "empty: every entry of every torch.nn.ModuleList in the model.",
    )
