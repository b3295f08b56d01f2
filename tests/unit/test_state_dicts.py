"""A train state's live objects and plain values, on one process (no Ray, no process group):
what goes into a sharded checkpoint, which blocks FSDP shards, and the consolidation that
downstream steps read."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp

from raytrain_orch.ray.strategy import blocks
from raytrain_orch.store.artifacts import Artifact
from raytrain_orch.store.checkpoint import SHARDS_DIR, VALUES_FILE, rank_manifest, write_manifest
from raytrain_orch.store.state_dicts import consolidate, load_into, split_state, state_dicts
from tests.pipelines.sharded import BlockNet


def _trained(seed: int = 0) -> tuple[BlockNet, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = BlockNet(hidden=16, blocks=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(8, 64)).sum().backward()
        optimizer.step()
    return model, optimizer


def _save_sharded(directory, model, optimizer, **values) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP warns that it saves without a process group
        dcp.save(state_dicts({"model": model, "optimizer": optimizer}), checkpoint_id=directory / SHARDS_DIR)
    torch.save(values, directory / VALUES_FILE)
    write_manifest(directory, name=rank_manifest(0), layout="sharded", world_size=1, epoch=values.get("epoch"))


def test_a_state_splits_into_live_objects_and_plain_values():
    model, optimizer = _trained()
    live, values = split_state({"model": model, "optimizer": optimizer, "epoch": 3, "config": {"hidden": 16}})
    assert live == {"model": model, "optimizer": optimizer}
    assert values == {"epoch": 3, "config": {"hidden": 16}}


def test_an_optimizer_without_its_model_in_the_state_says_what_to_add():
    _, optimizer = _trained()
    with pytest.raises(ValueError, match="put its model in the state too"):
        state_dicts({"optimizer": optimizer})


def test_a_sharded_checkpoint_consolidates_into_one_plain_state_dict(tmp_path):
    model, optimizer = _trained()
    _save_sharded(tmp_path, model, optimizer, epoch=7, hidden=16, blocks=3)

    state = consolidate(tmp_path)
    assert state["epoch"] == 7 and state["hidden"] == 16
    fresh = BlockNet(hidden=16, blocks=3)
    fresh.load_state_dict(state["model"])  # plain parameter names: no wrapper prefixes
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True))
    step_of_first = state["optimizer"]["state"]["stem.weight"]["step"]
    assert float(step_of_first) == 2.0  # the optimizer's state, keyed by parameter name

    artifact = Artifact(step="train", storage_uri=str(tmp_path), path=(), kind="model", checkpoint=str(tmp_path))
    assert artifact.load_state()["epoch"] == 7  # what evaluate and register read


def test_a_checkpoint_restores_into_live_objects_that_then_train_on_identically(tmp_path):
    model, optimizer = _trained(seed=0)
    _save_sharded(tmp_path, model, optimizer, epoch=1)
    other, other_optimizer = _trained(seed=1)
    live = {"model": other, "optimizer": other_optimizer}
    loaded = state_dicts(live)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(loaded, checkpoint_id=tmp_path / SHARDS_DIR)
    load_into(live, loaded)

    batch = torch.randn(8, 64)
    for net, opt in ((model, optimizer), (other, other_optimizer)):
        opt.zero_grad()
        net(batch).sum().backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True))


def test_fsdp_shards_each_entry_of_the_models_module_lists_and_a_nested_block_goes_with_its_outer_one():
    model = BlockNet(hidden=8, blocks=3)
    model.blocks[0].append(torch.nn.ModuleList([torch.nn.Linear(8, 8)]))  # a list inside a block
    assert blocks(model) == list(model.blocks)
    assert blocks(model, ("LayerNorm",)) == [block[0] for block in model.blocks]


def test_shard_modules_naming_no_class_of_the_model_lists_the_classes_it_has():
    with pytest.raises(ValueError) as raised:
        blocks(BlockNet(hidden=8, blocks=2), ("TransformerBlock",))
    assert "names no module of BlockNet" in str(raised.value) and "'Linear'" in str(raised.value)
