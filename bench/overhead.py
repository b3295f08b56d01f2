"""Orchestration overhead: ``rto run configs/digits.yaml`` against the same work in plain PyTorch.

Every comparison runs all sides in one process, alternating, several rounds, and reports medians
with their spread (min–max). The rto sides:

- ``shared``: this code, as a user's second and later runs see it: the shared local runtime is
  up (started by the warm-up run), each run joins it;
- ``first``: this code, the first run of a working session: no runtime is up (``rto down``
  before it), so the run starts it;
- ``before`` (``--before REF``, default the commit before the warm start): that commit's code
  from a git worktree, a fresh local Ray started and stopped by every run.

Figures:
1. wall time at the default workload (20 epochs) and at a ~1-minute one (``hidden=2048``,
   ``batch_size=16``, ``--large-epochs`` epochs): the ratio rto / plain;
2. the fixed start-up overhead (1-epoch runs: rto − plain) and the marginal per-epoch overhead
   (((N-epoch − 1-epoch) of rto − the same of plain) / (N − 1));
3. an unchanged re-run (every step a cache hit) against the cold run;
4. where a cold ``rto run`` spends its time, read from its own record (``state.json`` and
   ``events.jsonl``), before and after: the driver's start, Ray's start, each step's admission,
   Ray Train's worker-group start (a train step from its admission to its first epoch), each
   epoch's report + checkpoint, evaluate, register, Ray's shutdown.

Each rto run is a new process with a fresh storage root (one MLflow store is shared, as a
user's is). The plain side is ``bench/plain_digits.py``.

    .venv/bin/python bench/overhead.py               # → bench/results/overhead.json
    .venv/bin/python bench/overhead.py --rounds 1    # a quick look
    .venv/bin/python bench/overhead.py --only start-and-cache --before 6fde6d0 --rounds 3
        # the driver's start and the cached fraction only, this code against --before's, side by
        # side (→ bench/results/start_and_cache.json)
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
RESULTS = REPO / "bench" / "results"
LARGE = {"hidden": 2048, "batch_size": 16}

TRAIN_START = "train: Ray Train worker-group start (controller, workers, torch process group)"

#: The code before the warm start (issue 16): a fresh local Ray per run.
BEFORE = "4a426ad"


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "n": len(values),
    }


class Bench:
    def __init__(self, scratch: Path, before: Path):
        self.scratch = scratch
        self.before = before
        self.mlflow = f"sqlite:///{scratch / 'mlflow.db'}"

    def rto(
        self,
        epochs: int,
        params: dict[str, Any] | None = None,
        storage: Path | None = None,
        env: dict[str, str] | None = None,
        mode: str = "shared",
    ) -> dict[str, Any]:
        """One ``rto run`` in a new process; its wall time and its own record. ``mode``: see the
        module's docstring."""
        storage = storage or Path(tempfile.mkdtemp(prefix="runs-", dir=self.scratch))
        sets = {"storage": str(storage), "mlflow.tracking_uri": self.mlflow, "train.params.epochs": epochs}
        sets.update({f"train.params.{k}": v for k, v in (params or {}).items()})
        code = self.before if mode == "before" else REPO
        environment = {**os.environ, "RTO_HOME": str(self.scratch / "home"), **(env or {})}
        if mode == "before":
            environment["PYTHONPATH"] = str(code)
        if mode == "first":
            self.down()
        command = [
            sys.executable,
            "-m",
            "raytrain_orch",
            "run",
            "configs/digits.yaml",
            *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
        ]
        started = time.time()
        done = subprocess.run(command, cwd=code, env=environment, capture_output=True, text=True)
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

    def bare_trainer(self) -> dict[str, float]:
        """Ray Train's own start on the shared runtime (``bench/bare_trainer.py``): the bound."""
        done = subprocess.run(
            [sys.executable, str(REPO / "bench" / "bare_trainer.py")],
            cwd=REPO,
            env={**os.environ, "RTO_HOME": str(self.scratch / "home")},
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"bare_trainer.py failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def down(self) -> None:
        """Stop the shared runtime this benchmark's runs use."""
        subprocess.run(
            [sys.executable, "-m", "raytrain_orch", "down", "--force"],
            cwd=REPO,
            env={**os.environ, "RTO_HOME": str(self.scratch / "home")},
            capture_output=True,
        )

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
        **driver_start(run),
    }
    for step in ("prepare", "train", "evaluate", "register"):
        began, admitted = first[("step_started", step)]["ts"], first[("step_admitted", step)]["sent_ts"]
        ended = first[("step_succeeded", step)]["ts"]
        out[f"{step}: gang admission"] = admitted - began
        if step != "train":
            out[f"{step}: task (incl. its MLflow logging)"] = ended - admitted
            continue
        loop_began = epochs[0]["sent_ts"] - epochs[0]["epoch_s"]
        out[TRAIN_START] = loop_began - admitted
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


def driver_start(run: dict[str, Any]) -> dict[str, float]:
    """A cold run's start, from its own record: the process up to its plan (interpreter, imports,
    config, the pipeline's module, the plan), then its compute (Ray's import and connection, the
    backend), then its ``run_started`` record (the run directory, tracking's pipeline run). Code
    that records neither time gives the whole only."""
    driver = run["state"]["driver"]
    began = next(e["ts"] for e in run["events"] if e["event"] == "run_started")
    out = {"process start to run_started": began - driver["process_started_at"]}
    if "planned_at" in driver:
        out["process start to its plan (interpreter, imports, config, pipeline module, plan)"] = (
            driver["planned_at"] - driver["process_started_at"]
        )
        out["plan to compute ready (Ray import and connect, backend)"] = driver["compute_at"] - driver["planned_at"]
        out["compute ready to run_started (run directory, tracking)"] = began - driver["compute_at"]
    return {k: round(v, 3) for k, v in out.items()}


def measure_start_and_cache(bench: Bench, args) -> dict[str, Any]:
    """This code against ``--before``'s, alternating: a cold 20-epoch run on the warm shared runtime
    (its start broken down) and the same config again (all cached); the cached run's wall time as
    a fraction of the cold one's, per side."""
    bench.rto(1)  # warm-up: the shared runtime up, the MLflow store's schema
    walls: dict[str, list[float]] = {}
    starts: dict[str, list[dict[str, float]]] = {}
    for turn in range(args.rounds):
        print(f"round {turn + 1}/{args.rounds}", flush=True)
        for side, mode in (("before", "before"), ("now", "shared")):
            cold = bench.rto(20, mode=mode)
            cached = bench.rto(20, storage=cold["storage"], mode=mode)
            walls.setdefault(f"{side} cold", []).append(cold["wall_s"])
            walls.setdefault(f"{side} cached", []).append(cached["wall_s"])
            starts.setdefault(side, []).append(driver_start(cold))
            print(f"  {side:>6}: cold {cold['wall_s']:6.2f} s, cached {cached['wall_s']:5.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "rounds": args.rounds,
        "wall_s": {k: spread(v) for k, v in walls.items()},
        "cached_rerun_fraction_of_cold": {
            side: round(med[f"{side} cached"] / med[f"{side} cold"], 4) for side in ("before", "now")
        },
        "driver_start_s (cold 20-epoch run; median of rounds)": {
            side: {k: round(statistics.median(b[k] for b in runs), 3) for k in runs[0]} for side, runs in starts.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per comparison")
    parser.add_argument("--large-epochs", type=int, default=400, help="epochs of the ~1-minute workload")
    parser.add_argument("--before", default=BEFORE, help="git ref of the code to compare with (default: %(default)s)")
    parser.add_argument("--out", help="default: bench/results/overhead.json (start_and_cache.json with --only)")
    parser.add_argument("--only", choices=["start-and-cache"], help="measure only this part")
    args = parser.parse_args()
    args.out = args.out or str(RESULTS / ("start_and_cache.json" if args.only else "overhead.json"))

    with tempfile.TemporaryDirectory(prefix="rto-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        before = scratch / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=REPO, check=True)
        bench = Bench(scratch, before)
        try:
            result = measure_start_and_cache(bench, args) if args.only else measure(bench, args)
        finally:
            bench.down()
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=REPO)
    result["before"] = args.before
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    shown = ("ratio", "fixed_startup_overhead_s", "cached_rerun_fraction_of_cold", "driver_start_s")
    print(json.dumps({k: v for k, v in result.items() if k.startswith(shown)}, indent=2))


def measure(bench: Bench, args) -> dict[str, Any]:
    bench.rto(1, mode="before")  # warm-up: the MLflow store's schema, the page cache
    bench.rto(1)  # ... and the shared runtime up
    bench.plain(1)
    walls: dict[str, list[float]] = {}
    breakdowns: dict[str, list[dict[str, float]]] = {}
    cold_for_cache: list[dict[str, Any]] = []
    accuracy: dict[str, list[float]] = {"rto": [], "plain": []}
    workloads = (("small", 20, None), ("1-epoch", 1, LARGE), ("large", args.large_epochs, LARGE))

    for _round in range(args.rounds):
        print(f"round {_round + 1}/{args.rounds}", flush=True)
        for label, epochs, params in workloads:
            modes = ("before", "first", "shared") if label == "small" else ("before", "shared")
            for mode in modes:
                run = bench.rto(epochs, params, mode=mode)
                walls.setdefault(f"rto {mode} {label}", []).append(run["wall_s"])
                if label == "small":
                    breakdowns.setdefault(mode, []).append(breakdown(run))
                if label == "small" and mode == "shared":
                    cold_for_cache.append(run)
                    accuracy["rto"].append(run["state"]["steps"]["evaluate"]["metrics"]["test_accuracy"])
                print(f"  {label:>8}: rto {mode:<6} {run['wall_s']:7.2f} s", flush=True)
            plain = bench.plain(epochs, params)
            walls.setdefault(f"plain {label}", []).append(plain["wall_s"])
            if label == "small":
                accuracy["plain"].append(plain["test_accuracy"])
            print(f"  {label:>8}: plain        {plain['wall_s']:7.2f} s", flush=True)
        bare = bench.bare_trainer()
        walls.setdefault("bare TorchTrainer: fit() to the loop's first line", []).append(bare["fit_to_loop_s"])
        print(f"  bare TorchTrainer fit() to loop: {bare['fit_to_loop_s']:.2f} s", flush=True)
        cached = bench.rto(20, storage=cold_for_cache[-1]["storage"])  # the same config again: all cache hits
        walls.setdefault("rto shared small cached", []).append(cached["wall_s"])
        print(f"  {'cached':>8}: rto shared {cached['wall_s']:7.2f} s", flush=True)

    med = {k: statistics.median(v) for k, v in walls.items()}
    n = args.large_epochs

    def ratios(mode: str) -> dict[str, float]:
        return {
            "small (20 epochs)": round(med[f"rto {mode} small"] / med["plain small"], 3),
            "1-epoch (hidden 2048)": round(med[f"rto {mode} 1-epoch"] / med["plain 1-epoch"], 3),
            f"large ({n} epochs, hidden 2048, batch 16)": round(med[f"rto {mode} large"] / med["plain large"], 3),
        }

    def marginal(mode: str) -> float:
        rto = med[f"rto {mode} large"] - med[f"rto {mode} 1-epoch"]
        return round(1000 * (rto - (med["plain large"] - med["plain 1-epoch"])) / (n - 1), 1)

    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": _versions(),
        "rounds": args.rounds,
        "workloads": {"small": {"epochs": 20}, "large": {"epochs": n, **LARGE}, "1-epoch": {"epochs": 1, **LARGE}},
        "wall_s": {k: spread(v) for k, v in walls.items()},
        "ratio": {
            "shared": ratios("shared"),
            "before": ratios("before"),
            "first (small)": round(med["rto first small"] / med["plain small"], 3),
        },
        "fixed_startup_overhead_s": {
            mode: round(med[f"rto {mode} 1-epoch"] - med["plain 1-epoch"], 3) for mode in ("shared", "before")
        },
        "marginal_per_epoch_overhead_ms": {mode: marginal(mode) for mode in ("shared", "before")},
        "train_step_admission_to_first_epoch_s": {
            mode: round(statistics.median(b[TRAIN_START] for b in runs), 3) for mode, runs in breakdowns.items()
        },
        "bare_torchtrainer_fit_to_loop_s": spread(walls["bare TorchTrainer: fit() to the loop's first line"]),
        "cached_rerun_fraction_of_cold": round(med["rto shared small cached"] / med["rto shared small"], 4),
        "test_accuracy": {k: spread(v) for k, v in accuracy.items()},
        "breakdown_s (20-epoch run; median of rounds)": {
            mode: {k: round(statistics.median(b[k] for b in runs), 3) for k in runs[0]}
            for mode, runs in breakdowns.items()
        },
    }


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    return {name: md.version(name) for name in ("ray", "torch", "mlflow", "pyarrow")}


if __name__ == "__main__":
    main()
