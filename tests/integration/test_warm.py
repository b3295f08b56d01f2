"""Warm Ray Train on a real local Ray: Ray Train's processes carry exactly the runtime
environment ``ray/warm.py`` prestarts workers with, so a ``fit()`` after a prestart starts in
processes that were up before it began, with the pipeline's modules already imported."""

from __future__ import annotations

import json
import os
import time

import pytest
import ray
import ray.train
from ray.train.torch import TorchTrainer

from raytrain_orch.core.config import RayConfig
from raytrain_orch.ray import session, warm

pytestmark = pytest.mark.integration

#: A module only the setup hook imports in a worker (the pipeline's, in a run).
PRELOADED = "tests.pipelines.diamond"


@pytest.fixture(scope="module")
def local_ray():
    session.connect(RayConfig(num_cpus=2, runtime="throwaway"), preload=[PRELOADED])
    yield
    session.disconnect()


def _loop(config: dict) -> None:
    import sys

    import psutil
    import torch

    warm.fit_threads_to_cpus()  # as every train worker's entry does
    me = psutil.Process()
    seen = {
        "loop_ts": time.time(),
        "process_started": me.create_time(),
        "runtime_env": ray.get_runtime_context().get_runtime_env_string(),
        "preloaded": PRELOADED in sys.modules,
        "torch_threads": torch.get_num_threads(),
    }
    rank = ray.train.get_context().get_world_rank()
    with open(os.path.join(config["out"], f"rank-{rank}.json"), "w") as out:
        json.dump(seen, out)


def _fit(tmp_path, name: str) -> tuple[float, list[dict]]:
    started = time.time()
    TorchTrainer(
        _loop,
        train_loop_config={"out": str(tmp_path)},
        scaling_config=ray.train.ScalingConfig(num_workers=2),
        run_config=ray.train.RunConfig(storage_path=str(tmp_path / "train"), name=name),
    ).fit()
    return started, [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]


def test_a_fit_after_a_prestart_runs_in_processes_started_before_it(local_ray, tmp_path):
    prestarter = warm.Prestarter()
    job_env = ray._private.worker.global_worker.core_worker.get_job_config().runtime_env_info.serialized_runtime_env

    prestarter.train(num_workers=2)
    time.sleep(15)  # the raylet starts them two at a time; each imports Ray Train meanwhile
    started, ranks = _fit(tmp_path, "warm")
    prestarter.close()

    for rank in ranks:
        assert rank["runtime_env"] == warm.train_runtime_env(job_env)  # what the prestart asked for
        assert rank["process_started"] < started  # a prestarted process, not one the fit started
        # Ray Train's processes preload only its core: the pipeline's module (with torch) cost each
        # of a fit()'s helpers ~2 CPU-s for nothing (RTO_TRAIN_PRELOAD=full preloads it too).
        assert not rank["preloaded"]
        assert rank["torch_threads"] == 1  # its CPU, not the node's: torch was imported before it held one
    assert max(r["loop_ts"] for r in ranks) - started < 5.0
