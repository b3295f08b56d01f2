"""Elastic steps, drained nodes and hang detection, measured on a real two-node cluster on
127.0.0.1 (a head, ``--num-cpus 2 --resources '{"slot": 1}'``, and a second node with one
``slot``; each train worker takes a slot, so one runs on each node).

1. **A node lost under training: elastic against fixed size.** The digits pipeline's train step
   (2 workers; at epoch 5 the second node is lost: its raylet and workers SIGKILLed at once), as
   ``num_workers: 2`` with a new node joining 10 s after the loss (a fixed-size group cannot go
   on without one) and as ``num_workers: [1, 2]`` with no new node. Measured: the loss to the
   next completed epoch.
2. **A hang to its detection.** tests/pipelines/hangs.yaml: rank 1 of train blocks in epoch 3
   (limit: its floor, 10 s); the last report before the hang to the ``step_hung`` record.
3. **The watchdog's cost per epoch.** Driver side, the guard's work per progress event (timed
   in-process over 100,000 events); and the digits pipeline with ``hang_detection`` on and off,
   alternating, ``--rounds`` each: the median epoch time of each.

    .venv/bin/python bench/resilience.py [--rounds 2]

Writes bench/results/resilience.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raytrain_orch.store.state import RunStore  # noqa: E402
from raytrain_orch.store.storage import Storage  # noqa: E402
from tests.e2e.ray_nodes import BIN, env, lose, ray_node  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "resilience.json"
SLOT = {"train.scaling.resources_per_worker": "{CPU: 1, slot: 1}", "train.scaling.placement_strategy": "SPREAD"}


class Run:
    """``rto run`` in the background; when each console line came."""

    def __init__(self, config: str, workdir: Path, gcs: str | None, sets: dict[str, str]):
        overrides = {
            "storage": str(workdir / "rto-runs"),
            "storage_options.shared_mount": "true",
            "mlflow.tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}",
            **sets,
        }
        address = ["--address", gcs] if gcs else []
        command = [str(BIN / "rto"), "run", config, "--no-cache", *address]
        command += [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
        self.workdir = workdir
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env(PYTHONUNBUFFERED="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append((time.time(), line.rstrip("\n")))

    def wait_for(self, pattern: str, timeout_s: float = 300) -> float:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            for at, line in list(self.lines):
                if re.search(pattern, line):
                    return at
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.1)
        raise RuntimeError(f"no line matching {pattern!r}:\n" + "\n".join(line for _, line in self.lines[-40:]))

    def finish(self) -> list[dict]:
        if self.process.wait(timeout=900) != 0:
            raise RuntimeError("run failed:\n" + "\n".join(line for _, line in self.lines[-40:]))
        self._reader.join(timeout=10)
        store = RunStore(Storage(str(self.workdir / "rto-runs")))
        return store.events(store.latest().run_id)


def node_loss(head: str, workdir: Path, elastic: bool) -> dict:
    """Seconds from the loss of the second node to the next completed epoch."""
    started: list[subprocess.Popen] = []
    with contextlib.ExitStack() as stack:
        second = ray_node(workdir / "n2", num_cpus=1, head_address=head, resources={"slot": 1}, started=started)
        stack.enter_context(second)
        sets = {
            **SLOT,
            "train.scaling.num_workers": "[1, 2]" if elastic else "2",
            "train.params.epochs": "60",
            "train.params.hidden": "1024",
            "train.params.batch_size": "16",
        }
        run = Run("configs/digits.yaml", workdir, head, sets)
        run.wait_for(r"train +epoch 5/60")
        lose(started[0])
        lost = time.time()
        if not elastic:
            time.sleep(10)
            stack.enter_context(
                ray_node(workdir / "n3", num_cpus=1, head_address=head, resources={"slot": 1}, started=started)
            )
        recorded = run.finish()
    # The first epoch the restarted group completed (an epoch in flight when the node was lost may
    # still be reported by the survivor; sent_ts is when the worker sent it).
    restored = min(e["sent_ts"] for e in recorded if e["event"] == "restored" and e["sent_ts"] > lost)
    next_epoch = min(e["sent_ts"] for e in recorded if e["event"] == "epoch" and e["sent_ts"] > restored)
    sizes = [e["world_size"] for e in recorded if e["event"] == "workers_resized"]
    return {"elastic": elastic, "loss_to_next_epoch_s": round(next_epoch - lost, 1), "world_sizes": sizes}


def hang(head: str, workdir: Path) -> dict:
    quick = {"prepare.params.sleep_s": "0", "prepare.params.slow_s": "0"}  # prepare does not hang here
    run = Run("tests/pipelines/hangs.yaml", workdir, head, quick)
    recorded = run.finish()
    found = next(e for e in recorded if e["event"] == "step_hung" and e["step"] == "train")
    last = max(e["ts"] for e in recorded if e["event"] == "epoch" and e["attempt"] == 1)
    return {
        "limit_s": found["limit_s"],
        "last_progress_to_detection_s": round(found["detected_ts"] - last, 2),
        "detection_to_record_s": round(found["ts"] - found["detected_ts"], 2),  # the stacks taken meanwhile
        "processes": found["processes"],
    }


def guard_cost() -> dict:
    """The driver's work per progress event: one ``saw`` and one ``check`` of a running step."""
    import queue

    from raytrain_orch.core.plan import HangLimit, StepPlan
    from raytrain_orch.core.step_config import HangConfig
    from raytrain_orch.engine.hangs import HangGuard
    from raytrain_orch.store.state import RunState, Status, StepState

    guard = HangGuard(backend=None, notes=queue.SimpleQueue())  # type: ignore[arg-type]  # never ends anything here
    step = StepPlan.__new__(StepPlan)
    object.__setattr__(step, "name", "train")
    object.__setattr__(step, "hang", HangLimit(None, HangConfig()))
    guard.watch(step, 1)
    state = RunState(run_id="r", name="n", pipeline="p", config_hash="c")
    state.steps["train"] = StepState(kind="train", cache_key="k", status=Status.RUNNING)
    n = 100_000
    began = time.perf_counter()
    for _ in range(n):
        guard.saw({"event": "epoch", "step": "train"})
        guard.check(state)
    return {"per_event_us": round((time.perf_counter() - began) / n * 1e6, 2)}


def detection_on_off(rounds: int) -> dict:
    """The digits pipeline's median epoch time with hang detection on and off, alternating."""
    times: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(rounds):
        for mode in ("on", "off"):
            with tempfile.TemporaryDirectory(prefix="rto-bench-") as tmp:
                sets = {"train.hang_detection": "true" if mode == "on" else "false", "train.params.epochs": "20"}
                recorded = Run("configs/digits.yaml", Path(tmp), None, sets).finish()
                epoch_times = [e["perf"]["epoch_time_s"] for e in recorded if e["event"] == "epoch"][1:]
                times[mode].append(statistics.median(epoch_times))
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    return {
        "epoch_s_on": round(on, 4),
        "epoch_s_off": round(off, 4),
        "ratio_on_off": round(on / off, 3),
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--only", choices=["guard", "cluster", "on-off"], help="one part (the others keep their results)"
    )
    args = parser.parse_args()
    results: dict = json.loads(RESULTS.read_text()) if args.only and RESULTS.exists() else {}
    if args.only in (None, "guard"):
        results["guard"] = guard_cost()
        print(json.dumps(results["guard"]))
    if args.only in (None, "cluster"):
        with tempfile.TemporaryDirectory(prefix="rto-res-") as tmp:
            base = Path(tmp)
            with ray_node(base / "head", num_cpus=2, resources={"slot": 1}) as (head, _):
                results["node_loss"] = []
                for elastic in (True, False):
                    results["node_loss"].append(node_loss(head, base / f"loss-{elastic}", elastic))
                    print(json.dumps(results["node_loss"][-1]))
                results["hang"] = hang(head, base / "hang")
                print(json.dumps(results["hang"]))
    if args.only in (None, "on-off"):
        results["detection_on_off"] = detection_on_off(args.rounds)
        print(json.dumps(results["detection_on_off"]))
    results["measured_at"] = time.strftime("%Y-%m-%d %H:%M")
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("RTO_PLAIN_PROGRESS", "1")
    main()
