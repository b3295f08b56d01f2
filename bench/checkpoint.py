"""Checkpoints of a large model: the stall, the memory and the time until durable, side by side in
one run (``--rounds`` runs of each path, in alternating order).

One train step (``bench/checkpoint_job.py``) on 2 train workers (``CPU: 1`` each) holds
``--state-gb`` of model + optimizer state (a stack of 2048-wide Linear blocks with AdamW:
parameters, ``exp_avg`` and ``exp_avg_sq``, 12 bytes a parameter), trains ``--steps`` steps an
epoch on synthetic inputs and checkpoints every epoch, each path its own ``rto run``:

- ``baseline-fsdp`` / ``baseline-ddp``: no checkpoint (metrics only), the epoch and the memory
  without one for each strategy;
- ``whole``: today's whole-state path: ``strategy: ddp``, plain state dicts in ``state``; rank 0
  ``torch.save``s everything and Ray Train uploads it before ``report`` returns;
- ``sharded-sync``: ``strategy: fsdp``, the live model and optimizer in ``state``,
  ``checkpoint.asynchronous: false``: every rank writes its DCP shard, uploaded before
  ``report`` returns;
- ``sharded-async``: the same with ``asynchronous: true`` (the default): ``report`` waits for the
  staging copy only; the write and the upload run behind training.

Measured from each run's events.jsonl:

- **stall**: the epoch events' ``report_s`` (the time training stood still in ``report``), the
  median over epochs after the first (the first checkpoint also makes DCP's process group and
  its first staging buffers);
- **rank 0's peak RSS while checkpointing**: sampled every 10 ms in rank 0 by a thread; a window
  opens as a report is called and closes as the next one is, after the next epoch's training
  (for the asynchronous save: a window that outlives the background write; the events say
  whether the write was durable by then), the max over windows; the RSS just before the
  report beside it; a baseline's windows are the same span without a checkpoint;
- **time until durable**: ``checkpoint_durable``'s ``durable_s`` (from the report call until rank
  0's files are on storage); for the whole-state path the stall itself;
- **epoch time**: ``epoch_s`` (training between two reports) and the period ``epoch_s +
  report_s``, medians over the epochs after the first (each trains while the previous
  checkpoint is written in the background, for the asynchronous save).

Targets: async stall ≤ 20 % of the whole-state stall; rank 0's checkpoint-time peak RSS of the
sharded paths ≤ 60 % of the whole-state path's; an epoch with an async checkpoint ≤ 1.1× one
without. What bounds them is measured in the same run: the bytes of each rank's shard (what
staging copies), one core's copy bandwidth, and this disk's write bandwidth (to the page cache
and through ``fsync``).

    .venv/bin/python bench/checkpoint.py --rounds 2         # 1 GB of state → bench/results/checkpoint.json (≈ 13 min)
    .venv/bin/python bench/checkpoint.py --malloc-mmap-threshold 1048576   # the same under a fixed glibc
                                                            # mmap threshold, kept beside it in the same file
    .venv/bin/python bench/checkpoint.py --state-gb 0.1 --out /tmp/checkpoint-small.json   # a quick look

Storage, MLflow and the runs' own local Ray runtime (``RTO_HOME``) live in a temporary
directory on local disk; the runtime is stopped at the end.
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

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "bench"
BIN = Path(sys.executable).parent
RESULTS = HERE / "results" / "checkpoint.json"
HIDDEN = 2048
MB = 2**20

#: path → (strategy, the job's checkpoint param, checkpoint.asynchronous)
PATHS: dict[str, tuple[str, str, bool]] = {
    "baseline-ddp": ("ddp", "none", True),
    "whole": ("ddp", "whole", True),
    "baseline-fsdp": ("fsdp", "none", True),
    "sharded-sync": ("fsdp", "sharded", False),
    "sharded-async": ("fsdp", "sharded", True),
}


def layers_for(state_gb: float) -> int:
    """Blocks whose parameters and AdamW moments take ``state_gb`` (12 bytes a parameter)."""
    return max(2, round(state_gb * 1e9 / (12 * HIDDEN * (HIDDEN + 1))))


def write_config(directory: Path, path: str, params: dict[str, Any], mlflow: str) -> Path:
    strategy, checkpoint, asynchronous = PATHS[path]
    config = {
        "name": f"checkpoint-{path}",
        "pipeline": "checkpoint_job:pipeline",
        "storage": str(directory / "runs"),
        "mlflow": {"tracking_uri": mlflow, "experiment": "bench-checkpoint", "system_metrics": False},
        "steps": {
            "train": {
                "strategy": strategy,
                "params": {**params, "checkpoint": checkpoint},
                "scaling": {"num_workers": 2, "resources_per_worker": {"CPU": 1}},
                "failure": {"max_failures": 0},
                "checkpoint": {"num_to_keep": 2, "asynchronous": asynchronous},
            }
        },
    }
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return directory / "config.yaml"


def rto_run(config: Path, env: dict[str, str]) -> dict[str, Any]:
    """``rto run CONFIG`` in a new process (from ``bench/``, where the job lives); its events."""
    load = os.getloadavg()[0]
    began = time.perf_counter()
    done = subprocess.run(
        [str(BIN / "rto"), "run", str(config), "--no-cache"],
        cwd=HERE,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"rto run {config} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
    runs = config.parent / "runs" / "runs"
    (run_dir,) = list(runs.iterdir())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    return {"wall_s": wall, "load_before": load, "load_after": os.getloadavg()[0], "events": events}


def checkpoint_mb(storage: Path) -> float | None:
    """The size of the newest checkpoint directory kept on storage."""
    found = [p for p in storage.rglob("checkpoint_*") if p.is_dir()]
    if not found:
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime)
    return round(sum(f.stat().st_size for f in newest.rglob("*") if f.is_file()) / MB, 1)


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def epochs_of(run: dict[str, Any]) -> list[dict[str, Any]]:
    """One run's measured epochs: each epoch event with its RSS window and its checkpoint's durability."""
    train = [e for e in run["events"] if e.get("step") == "train"]
    measured = run["epochs"]  # the baseline's closing report (epoch == epochs) is no measured epoch
    epochs = sorted((e for e in train if e["event"] == "epoch" and e["epoch"] < measured), key=lambda e: e["epoch"])
    windows = {
        e["index"]: e["metrics"] for e in train if e["event"] == "metrics" and "rss_window_peak_mb" in e["metrics"]
    }
    durable = {e["epoch"]: e for e in train if e["event"] == "checkpoint_durable"}
    out = []
    for e in epochs:
        window = windows.get(e["epoch"], {})
        done = durable.get(e["epoch"])
        out.append(
            {
                "round": run["round"],
                "epoch": e["epoch"],
                "epoch_s": e["epoch_s"],
                "report_s": e["report_s"],
                "rss_start_mb": round(e["metrics"]["rss_start_mb"], 1),
                "rss_before_mb": round(e["metrics"]["rss_before_mb"], 1),
                "rss_window_peak_mb": round(window["rss_window_peak_mb"], 1) if window else None,
                "window_cpu_s": round(window["window_cpu_s"], 2) if window else None,
                "durable_s": done["durable_s"] if done else None,
                # whether rank 0's files were on storage when the window closed (after the next epoch's training)
                "durable_in_window": (done["ts"] <= window["window_closed_ts"]) if done and window else None,
                "malloc_mmap_threshold": int(e["metrics"].get("malloc_mmap_threshold", 0)),
                "local_state_mb": round(e["metrics"]["local_state_mb"], 1),
            }
        )
    return out


def summarise(path: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A path's figures over its runs: medians over the epochs after each run's first (whose report
    makes the first checkpoint, DCP's process group and its first buffers), the max of the peaks."""
    per_epoch = [e for run in runs for e in epochs_of(run)]
    later = [e for e in per_epoch if e["epoch"] > 0]
    peaks = [e["rss_window_peak_mb"] for e in per_epoch if e["rss_window_peak_mb"] is not None]
    kind = PATHS[path][1]
    stall = median([e["report_s"] for e in later])
    return {
        "strategy": PATHS[path][0],
        "checkpoint": kind,
        "asynchronous": PATHS[path][2] if kind == "sharded" else None,
        "runs": len(runs),
        "wall_s": [round(run["wall_s"], 1) for run in runs],
        "load_before": [round(run["load_before"], 2) for run in runs],
        "load_after": [round(run["load_after"], 2) for run in runs],
        "rank0_state_mb": per_epoch[0]["local_state_mb"],
        "worker_malloc_mmap_threshold": per_epoch[0]["malloc_mmap_threshold"],
        "checkpoint_on_storage_mb": checkpoint_mb(runs[-1]["storage"]),
        "stall_s": stall,
        "stall_first_s": median([e["report_s"] for e in per_epoch if e["epoch"] == 0]),
        "durable_s": (stall if kind == "whole" else median([e["durable_s"] for e in later if e["durable_s"]]))
        if kind != "none"
        else None,
        "epoch_s": median([e["epoch_s"] for e in later]),
        "epoch_s_min": min(e["epoch_s"] for e in later),
        "period_s": median([e["epoch_s"] + e["report_s"] for e in later]),
        "rss_peak_mb": max(peaks) if peaks else None,
        "rss_before_mb": median([e["rss_before_mb"] for e in per_epoch]),
        "rss_process_start_mb": median([e["rss_start_mb"] for e in per_epoch]),
        "window_cpu_s": median([e["window_cpu_s"] for e in later if e["window_cpu_s"] is not None]),
        "per_epoch": per_epoch,
    }


def bounds(directory: Path, shard_bytes: int, repeats: int = 3) -> dict[str, Any]:
    """What the targets are bounded by on this machine, medians of ``repeats``: one core copying a
    rank's shard in memory (DCP's staging), writing it to a file on this disk (DCP's write: to the
    page cache, and through ``fsync``), and copying that file (the upload to a local storage root)."""
    import shutil

    import torch

    torch.set_num_threads(1)
    source = torch.rand(shard_bytes // 4)
    timings: dict[str, list[float]] = {"copy": [], "write_page_cache": [], "write_fsync": [], "file_copy": []}
    for _ in range(repeats):
        began = time.perf_counter()
        copy = source.clone()
        timings["copy"].append(time.perf_counter() - began)
        del copy
    data = source.numpy().tobytes()
    del source
    written = directory / "write.bin"
    for _ in range(repeats):
        for label, sync in (("write_page_cache", False), ("write_fsync", True)):
            began = time.perf_counter()
            with open(written, "wb") as f:
                f.write(data)
                if sync:
                    f.flush()
                    os.fsync(f.fileno())
            timings[label].append(time.perf_counter() - began)
        began = time.perf_counter()
        shutil.copyfile(written, directory / "copy.bin")
        timings["file_copy"].append(time.perf_counter() - began)
        (directory / "copy.bin").unlink()
        written.unlink()
    out: dict[str, Any] = {"shard_mb": round(shard_bytes / MB, 1)}
    for label, seconds in timings.items():
        out[f"{label}_s"] = round(statistics.median(seconds), 3)
        out[f"{label}_gb_s"] = round(shard_bytes / statistics.median(seconds) / 1e9, 2)
    return out


def against_baselines(paths: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each checkpointing path against the baseline of its strategy: what its checkpoint adds to
    rank 0's peak RSS, to rank 0's CPU seconds per window (report + the next epoch) and to an epoch."""
    out: dict[str, Any] = {}
    for path, r in paths.items():
        base = paths.get(f"baseline-{r['strategy']}")
        if r["checkpoint"] == "none" or base is None:
            continue
        out[path] = {
            "rss_peak_over_baseline_mb": round(r["rss_peak_mb"] - base["rss_peak_mb"], 1),
            "cpu_s_per_checkpoint_rank0": round(r["window_cpu_s"] - base["window_cpu_s"], 2),
            "epoch_s_over_baseline": ratio(r["epoch_s"], base["epoch_s"]),
            "period_over_baseline": ratio(r["period_s"], base["period_s"]),
        }
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def targets(paths: dict[str, dict[str, Any]]) -> dict[str, Any]:
    whole, sync, done = paths.get("whole"), paths.get("sharded-sync"), paths.get("sharded-async")
    base = paths.get("baseline-fsdp")
    out: dict[str, Any] = {}
    if whole and done:
        out["async_stall_over_whole_stall"] = {"value": ratio(done["stall_s"], whole["stall_s"]), "target": 0.2}
    if whole and done:
        out["async_peak_rss_over_whole"] = {"value": ratio(done["rss_peak_mb"], whole["rss_peak_mb"]), "target": 0.6}
    if whole and sync:
        out["sync_peak_rss_over_whole"] = {"value": ratio(sync["rss_peak_mb"], whole["rss_peak_mb"]), "target": 0.6}
    if done and base:
        out["async_period_over_baseline"] = {"value": ratio(done["period_s"], base["period_s"]), "target": 1.1}
        out["async_epoch_s_over_baseline"] = {"value": ratio(done["epoch_s"], base["epoch_s"]), "target": None}
    for value in out.values():
        value["met"] = value["value"] <= value["target"] if value["target"] and value["value"] is not None else None
    return out


def table(paths: dict[str, dict[str, Any]]) -> str:
    def cell(value: Any, unit: str = "") -> str:
        return "–" if value is None else f"{value:.2f}{unit}" if isinstance(value, float) else f"{value}{unit}"

    rows = [
        "| path | stall / checkpoint | until durable | rank 0 peak RSS (before report) | epoch_s | epoch + stall |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in paths.items():
        peak = "–" if r["rss_peak_mb"] is None else f"{r['rss_peak_mb']:.0f} MB ({r['rss_before_mb']:.0f} MB)"
        rows.append(
            f"| {name} | {cell(r['stall_s'], ' s')} | {cell(r['durable_s'], ' s')} | {peak} | "
            f"{cell(r['epoch_s'], ' s')} | {cell(r['period_s'], ' s')} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-gb", type=float, default=1.0, help="model + AdamW state, all ranks together")
    parser.add_argument("--epochs", type=int, default=4, help="checkpointed epochs per run")
    parser.add_argument("--steps", type=int, default=4, help="training steps an epoch")
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each path, in alternating order")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"a comma-separated subset of {', '.join(PATHS)}")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        help="run the workers with glibc's MALLOC_MMAP_THRESHOLD_=BYTES (a fixed threshold: every larger "
        "allocation is its own mapping, returned on free); stored beside the main run in --out",
    )
    parser.add_argument("--keep", action="store_true", help="keep the runs' directory (printed) to look into")
    args = parser.parse_args()
    chosen = [p for p in args.paths.split(",") if p]
    unknown = set(chosen) - set(PATHS)
    if unknown:
        parser.error(f"unknown paths {sorted(unknown)}")
    layers = layers_for(args.state_gb)
    params = {"epochs": args.epochs, "hidden": HIDDEN, "layers": layers, "steps": args.steps}
    params["batch_size"] = args.batch_size
    state_bytes = 12 * layers * HIDDEN * (HIDDEN + 1)
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {
            "cpus": psutil.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "command": " ".join(["bench/checkpoint.py", *sys.argv[1:]]),
        "state_gb": round(state_bytes / 1e9, 3),
        "params": params,
        "paths": {},
    }
    with tempfile.TemporaryDirectory(prefix="rto-bench-checkpoint-") as tmp:
        scratch = Path(tempfile.mkdtemp(prefix="rto-bench-checkpoint-")) if args.keep else Path(tmp)
        env = {"RTO_HOME": str(scratch / "home")}  # the runs' own runtime, started with this environment
        if args.malloc_mmap_threshold:
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
        mlflow = f"sqlite:///{scratch / 'mlflow.db'}"
        runs: dict[str, list[dict[str, Any]]] = {path: [] for path in chosen}
        try:
            for round_ in range(args.rounds):
                for path in chosen if round_ % 2 == 0 else chosen[::-1]:  # alternating order
                    directory = scratch / f"{path}-{round_}"
                    config = write_config(directory, path, params, mlflow)
                    print(f"{path}, round {round_ + 1}: rto run {config}", flush=True)
                    run = rto_run(config, env)
                    runs[path].append({**run, "epochs": args.epochs, "round": round_, "storage": directory / "runs"})
                    brief = {k: v for k, v in summarise(path, runs[path][-1:]).items() if k != "per_epoch"}
                    print(f"{path}, round {round_ + 1}: {json.dumps(brief)}", flush=True)
        finally:
            subprocess.run([str(BIN / "rto"), "down", "--force"], cwd=HERE, env={**os.environ, **env}, check=False)
        results["paths"] = {path: summarise(path, runs[path]) for path in chosen}
        results["bounds"] = bounds(scratch, state_bytes // 2)
    results["targets"] = targets(results["paths"])
    results["against_baselines"] = against_baselines(results["paths"])
    print(table(results["paths"]))
    print(json.dumps({k: results[k] for k in ("bounds", "targets", "against_baselines")}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    before = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.malloc_mmap_threshold:  # a variant of the main run: kept beside it in the same file
        results["malloc_mmap_threshold"] = args.malloc_mmap_threshold
        results = {**before, f"malloc_mmap_threshold_{args.malloc_mmap_threshold}": results}
    else:  # the main run: the variants measured beside it stay
        results.update({k: v for k, v in before.items() if k.startswith("malloc_mmap_threshold_")})
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
