"""The bound on a train step's start: a bare ``TorchTrainer`` (2 CPU workers, a loop that only
notes the time) on the shared local runtime, from ``fit()`` to the loop's first line and to
``fit()``'s return. No orchestration: Ray Train's own controller, worker and process-group start.

    RTO_HOME=… .venv/bin/python bench/bare_trainer.py    # prints one JSON line
"""

from __future__ import annotations

import json
import tempfile
import time

from raytrain_orch.core.config import RayConfig
from raytrain_orch.ray import session


def loop(config: dict) -> None:
    import ray.train

    if ray.train.get_context().get_world_rank() == 0:
        with open(config["out"], "w") as f:
            f.write(str(time.time()))


def main() -> None:
    connection = session.connect(RayConfig())
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    try:
        with tempfile.TemporaryDirectory(prefix="bare-trainer-") as storage:
            out = f"{storage}/loop_started"
            trainer = TorchTrainer(
                loop,
                train_loop_config={"out": out},
                scaling_config=ScalingConfig(num_workers=2),
                run_config=RunConfig(storage_path=storage, name="bare"),
            )
            began = time.time()
            trainer.fit()
            ended = time.time()
            with open(out) as f:
                started = float(f.read())
        print(json.dumps({"fit_to_loop_s": started - began, "fit_s": ended - began, "ray": connection.kind}))
    finally:
        session.disconnect()


if __name__ == "__main__":
    main()
