"""Orchestration overhead: ``rto run configs/digits.yaml`` against the same work in plain PyTorch.

Every comparison runs both sides in one process, alternating A/B, several rounds, and reports
medians with their spread (min–max):

1. wall time at the default workload (20 epochs) and at a ~1-minute one (``hidden=2048``,
   ``batch_size=16``, ``--large-epochs`` epochs): the ratio rto / plain;
2. the fixed start-up overhead (1-epoch runs: rto − plain) and the marginal per-epoch overhead
   (((N-epoch − 1-epoch) of rto − the same of plain) / (N − 1));
3. an unchanged re-run (every step a cache hit) against the cold run;
4. where a cold ``rto run`` spends its time, read from its own record (``state.json`` and
   ``events.jsonl``: the driver's start, Ray's start, each step's admission, Ray Train's worker
   group start, each epoch's report + checkpoint and MLflow logging, evaluate, register);
5. before/after of the Ray Train settings this project changes (``--settings``): the same
   N-epoch run with Ray's own defaults and with the project's.

Each rto run is a cold start: a new process, a new local Ray, a fresh storage root (one MLflow
store is shared, as a user's is). The plain side is ``bench/plain_digits.py``.

    .venv/bin/python bench/overhead.py               # → bench/results/overhead.json
    .venv/bin/python bench/overhead.py --rounds 1    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = REPO / "bench" / "results"
LARGE = {"hidden": 2048, "batch_size": 16}

#: Ray Train's own defaults for what ``raytrain_orch.ray.session.WORKER_ENV`` changes.
RAY_DEFAULTS = {"RTO_TRAIN_HEALTH_CHECK_INTERVAL_S": "2.0"}


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "n": len(values),
    }


class Bench:
    def __init__(self, scratch: Path):
        self.scratch = scratch
        self.mlflow = f"sqlite:///{scratch / 'mlflow.db'}"

    def rto(
        self,
        epochs: int,
        params: dict[str, Any] | None = None,
        storage: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One ``rto run`` in a new process; its wall time and its own record."""
        storage = storage or Path(tempfile.mkdtemp(prefix="runs-", dir=self.scratch))
        sets = {"storage": str(storage), "mlflow.tracking_uri": self.mlflow, "train.params.epochs": epochs}
        sets.update({f"train.params.{k}": v for k, v in (params or {}).items()})
        command = [
            str(BIN / "rto"),
            "run",
            "configs/digits.yaml",
            *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
        ]
        started = time.time()
        done = subprocess.run(command, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True)
        ended = time.time()
        if done.returncode != 0:
            raise SystemExit(f"rto run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        run_dir = max(
            (storage / "runs").iterdir(), key=lambda d: json.loads((d / "state.json").read_text())["created_at"]
        )  # this run's
        state = json.loads((run_dir / "state.json").read_text())
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
        return {
            "wall_s": ended - started,
            "started": started,
            "ended": ended,
            "state": state,
            "events": events,
            "storage": storage,
        }

    @staticmethod
    def plain(epochs: int, params: dict[str, Any] | None = None) -> dict[str, Any]:
        command = [sys.executable, str(REPO / "bench" / "plain_digits.py"), "--epochs", str(epochs), "--json"]
        for key, value in (params or {}).items():
            command += [f"--{key.replace('_', '-')}", str(value)]
        for attempt in (1, 2):
            started = time.time()
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            if done.returncode == 0:
                return {"wall_s": time.time() - started, **json.loads(done.stdout.strip().splitlines()[-1])}
            print(
                f"plain run failed ({done.returncode}), attempt {attempt}:\n{done.stderr[-2000:]}",
                file=sys.stderr,
                flush=True,
            )
        raise SystemExit("the plain script failed twice; see its errors above")


def breakdown(run: dict[str, Any]) -> dict[str, float]:
    """Where one cold ``rto run`` spent its time, from its own record."""
    events, driver = run["events"], run["state"]["driver"]
    first = {}
    for e in events:
        first.setdefault((e["event"], e.get("step")), e)
    epochs = [e for e in events if e["event"] == "epoch" and "epoch_s" in e]
    started_run = first[("run_started", None)]["ts"]
    out: dict[str, float] = {
        "process start to Ray connect (interpreter, imports, config, plan)": started_run
        - driver["process_started_at"]
        - driver["ray_connect_s"],
        "Ray start (ray.init)": driver["ray_connect_s"],
    }
    for step in ("prepare", "train", "evaluate", "register"):
        began, admitted = first[("step_started", step)]["ts"], first[("step_admitted", step)]["sent_ts"]
        ended = first[("step_succeeded", step)]["ts"]
        out[f"{step}: gang admission"] = admitted - began
        if step != "train":
            out[f"{step}: task (incl. its MLflow logging)"] = ended - admitted
            continue
        loop_began = epochs[0]["sent_ts"] - epochs[0]["epoch_s"]
        out["train: Ray Train worker-group start (controller, workers, torch process group)"] = loop_began - admitted
        out["train: the loop's own work (data, model set-up, 20 epochs)"] = sum(
            e["epoch_s"] for e in epochs
        )  # ends where the report begins
        out["train: report + checkpoint, all epochs"] = sum(e["report_s"] for e in epochs)
        out["train: metrics to the driver (system metrics sampled), all epochs"] = sum(e["log_s"] for e in epochs)
        out["train: after the last report (fit returns, artifact stored)"] = ended - epochs[-1]["sent_ts"]
        out["per epoch: report + checkpoint (median)"] = statistics.median(e["report_s"] for e in epochs)
        out["per epoch: metrics to the driver (median)"] = statistics.median(e["log_s"] for e in epochs)
    finished = first[("run_finished", None)]["ts"]
    out["between steps (driver bookkeeping, MLflow step runs)"] = (finished - started_run) - sum(
        first[("step_succeeded", s)]["ts"] - first[("step_started", s)]["ts"]
        for s in ("prepare", "train", "evaluate", "register")
    )
    out["Ray shutdown and exit"] = run["ended"] - finished
    out["wall"] = run["wall_s"]
    return {k: round(v, 4) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds per comparison")
    parser.add_argument("--large-epochs", type=int, default=400, help="epochs of the ~1-minute workload")
    parser.add_argument("--settings-epochs", type=int, default=40, help="epochs of the before/after settings run")
    parser.add_argument("--out", default=str(RESULTS / "overhead.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rto-bench-") as scratch_dir:
        bench = Bench(Path(scratch_dir))
        bench.rto(1)  # warm-up: the MLflow store's schema, the page cache
        bench.plain(1)
        walls: dict[str, list[float]] = {}
        breakdowns: list[dict[str, float]] = []
        cold_for_cache: list[dict[str, Any]] = []
        accuracy: dict[str, list[float]] = {"rto": [], "plain": []}

        def pair(label: str, epochs: int, params: dict[str, Any] | None = None) -> None:
            run = bench.rto(epochs, params)
            plain = bench.plain(epochs, params)
            walls.setdefault(f"rto {label}", []).append(run["wall_s"])
            walls.setdefault(f"plain {label}", []).append(plain["wall_s"])
            if label == "small":
                breakdowns.append(breakdown(run))
                cold_for_cache.append(run)
                accuracy["rto"].append(run["state"]["steps"]["evaluate"]["metrics"]["test_accuracy"])
                accuracy["plain"].append(plain["test_accuracy"])
            print(f"  {label:>8}: rto {run['wall_s']:7.2f} s   plain {plain['wall_s']:7.2f} s", flush=True)

        for _round in range(args.rounds):
            print(f"round {_round + 1}/{args.rounds}", flush=True)
            pair("small", 20)
            pair("1-epoch", 1, LARGE)
            pair("large", args.large_epochs, LARGE)
            cached = bench.rto(20, storage=cold_for_cache[-1]["storage"])  # the same config again: all cache hits
            walls.setdefault("rto small cached", []).append(cached["wall_s"])
            print(f"  {'cached':>8}: rto {cached['wall_s']:7.2f} s", flush=True)

        settings: dict[str, list[float]] = {}
        for _round in range(args.rounds):
            for label, env in (("ray defaults", RAY_DEFAULTS), ("project defaults", {})):
                run = bench.rto(args.settings_epochs, LARGE, env=env)
                epochs = [e for e in run["events"] if e["event"] == "epoch" and "report_s" in e]
                settings.setdefault(f"{label}: wall", []).append(run["wall_s"])
                settings.setdefault(f"{label}: report per epoch", []).append(
                    statistics.median(e["report_s"] for e in epochs)
                )
                print(f"  settings {label}: {run['wall_s']:.2f} s", flush=True)

    med = {k: statistics.median(v) for k, v in walls.items()}
    n = args.large_epochs
    marginal = ((med["rto large"] - med["rto 1-epoch"]) - (med["plain large"] - med["plain 1-epoch"])) / (n - 1)
    keys = breakdowns[0].keys()
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": _versions(),
        "rounds": args.rounds,
        "workloads": {"small": {"epochs": 20}, "large": {"epochs": n, **LARGE}, "1-epoch": {"epochs": 1, **LARGE}},
        "wall_s": {k: spread(v) for k, v in walls.items()},
        "ratio": {
            "small (20 epochs)": round(med["rto small"] / med["plain small"], 3),
            f"large ({n} epochs, hidden 2048, batch 16)": round(med["rto large"] / med["plain large"], 3),
        },
        "fixed_startup_overhead_s": round(med["rto 1-epoch"] - med["plain 1-epoch"], 3),
        "marginal_per_epoch_overhead_ms": round(1000 * marginal, 1),
        "cached_rerun_fraction_of_cold": round(med["rto small cached"] / med["rto small"], 4),
        "test_accuracy": {k: spread(v) for k, v in accuracy.items()},
        "breakdown_s (cold rto run, 20 epochs; median of rounds)": {
            k: round(statistics.median(b[k] for b in breakdowns), 3) for k in keys
        },
        f"settings ({args.settings_epochs} epochs, hidden 2048, batch 16)": {k: spread(v) for k, v in settings.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "ratio",
                    "fixed_startup_overhead_s",
                    "marginal_per_epoch_overhead_ms",
                    "cached_rerun_fraction_of_cold",
                )
            },
            indent=2,
        )
    )


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    return {name: md.version(name) for name in ("ray", "torch", "mlflow", "pyarrow")}


if __name__ == "__main__":
    main()
