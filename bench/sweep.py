"""ASHA against the same sweep run to completion (FIFO), side by side in one run.

Both sweeps run `configs/digits_sweep.yaml` with the random searcher and the same seed, so they
try the same trials in the same order; only the scheduler differs. For each: the trial-epochs
trained (epoch reports of every trial), the sweep's wall time, and the wall time until some
trial first reported a validation accuracy within 1 % of the best either sweep found.

    .venv/bin/python bench/sweep.py [--samples 8] [--epochs 10] [--repeats 1]   # → bench/results/sweep.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
RTO = str(Path(sys.executable).parent / "rto")
sys.path.insert(0, str(REPO))

from raytrain_orch.store.state import RunStore  # noqa: E402
from raytrain_orch.store.storage import Storage  # noqa: E402

WITHIN = 0.01  # "within 1 % of the best": val_accuracy ≥ best − 0.01


def sweep(directory: Path, scheduler: str, samples: int, epochs: int) -> dict:
    items = [
        f"storage={directory / 'rto-runs'}",
        f"mlflow.tracking_uri=sqlite:///{directory / 'mlflow.db'}",
        f"sweep.scheduler={scheduler}",
        "sweep.searcher=random",
        f"sweep.num_samples={samples}",
        f"train.params.epochs={epochs}",
    ]
    sets = [arg for item in items for arg in ("--set", item)]
    started = time.monotonic()
    subprocess.run([RTO, "run", "configs/digits_sweep.yaml", *sets], cwd=REPO, check=True, capture_output=True)
    wall = time.monotonic() - started
    store = RunStore(Storage(str(directory / "rto-runs")))
    run = store.latest()
    events = store.events(run.run_id)
    begin = next(e["ts"] for e in events if e["event"] == "step_started" and e["step"] == "train")
    end = next(e["ts"] for e in events if e["event"] in ("step_succeeded", "step_failed") and e["step"] == "train")
    reports = [
        (e["ts"] - begin, e["trial"], e["metrics"]["val_accuracy"])
        for e in events
        if e["event"] == "epoch" and e.get("trial")
    ]
    table = next(e for e in events if e["event"] == "sweep_finished")["trials"]
    return {
        "scheduler": scheduler,
        "run_wall_s": round(wall, 1),
        "sweep_wall_s": round(end - begin, 1),
        "trial_epochs": len(reports),
        "trials_stopped_early": sum(t["status"] == "stopped" for t in table),
        "best_val_accuracy": max(t["val_accuracy"] for t in table if t["status"] == "finished"),
        "reports": reports,
    }


def time_to(result: dict, target: float) -> float | None:
    return next((round(t, 1) for t, _, acc in sorted(result["reports"]) if acc >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    rounds = []
    for _ in range(args.repeats):
        pair = {}
        for scheduler in ("asha", "fifo"):  # alternating, one of each per round
            with tempfile.TemporaryDirectory(prefix=f"rto-bench-sweep-{scheduler}-") as directory:
                pair[scheduler] = sweep(Path(directory), scheduler, args.samples, args.epochs)
                print(scheduler, {k: v for k, v in pair[scheduler].items() if k != "reports"}, flush=True)
        best = max(r["best_val_accuracy"] for r in pair.values())
        for r in pair.values():
            r["target_val_accuracy"] = round(best - WITHIN, 4)
            r["time_to_target_s"] = time_to(r, best - WITHIN)
        rounds.append(pair)

    def median(scheduler: str, key: str) -> float | None:
        values = [p[scheduler][key] for p in rounds if p[scheduler][key] is not None]
        return statistics.median(values) if values else None

    summary = {}
    for key in ("trial_epochs", "sweep_wall_s", "time_to_target_s", "best_val_accuracy"):
        asha, fifo = median("asha", key), median("fifo", key)
        summary[key] = {"asha": asha, "fifo": fifo, "asha_over_fifo": round(asha / fifo, 3) if asha and fifo else None}
    results = {
        "machine": {"cpus": psutil.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": " ".join(["bench/sweep.py", *sys.argv[1:]]),
        "samples": args.samples,
        "epochs": args.epochs,
        "summary": summary,
        "rounds": [{s: {k: v for k, v in r.items() if k != "reports"} for s, r in p.items()} for p in rounds],
    }
    out = REPO / "bench" / "results" / "sweep.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
