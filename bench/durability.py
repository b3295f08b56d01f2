"""Durability numbers for the digits pipeline, measured with the real CLI and real kills.

1. cached re-run wall / cold run wall (same config, same storage);
2. time from SIGKILL of one Ray Train worker to the next completed epoch;
3. epochs recomputed after SIGKILL of the driver and `rto resume`.

    .venv/bin/python bench/durability.py [cache|worker_kill|driver_kill]...   # → bench/results/durability.json
"""

from __future__ import annotations

import json
import platform
import signal
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


def overrides(directory: Path, *extra: str) -> list[str]:
    items = [f"storage={directory / 'rto-runs'}", f"mlflow.tracking_uri=sqlite:///{directory / 'mlflow.db'}", *extra]
    return [arg for item in items for arg in ("--set", item)]


def timed_run(directory: Path, *extra: str) -> float:
    started = time.monotonic()
    subprocess.run(
        [RTO, "run", "configs/digits.yaml", *overrides(directory, *extra)], cwd=REPO, check=True, capture_output=True
    )
    return time.monotonic() - started


def start(directory: Path, epochs: int) -> subprocess.Popen:
    command = [
        RTO,
        "run",
        "configs/digits.yaml",
        *overrides(directory, f"train.params.epochs={epochs}", "train.params.batch_size=16"),
    ]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(process: subprocess.Popen, text: str) -> None:
    for line in process.stdout:
        if text in line:
            return
    raise RuntimeError(f"the run ended before {text!r}")


def events(directory: Path) -> tuple[str, list[dict]]:
    store = RunStore(Storage(str(directory / "rto-runs")))
    run = store.latest()
    return run.run_id, store.events(run.run_id)


def cache_ratio(directory: Path) -> dict:
    cold = timed_run(directory)
    cached = timed_run(directory)
    return {"cold_wall_s": round(cold, 2), "cached_wall_s": round(cached, 2), "ratio": round(cached / cold, 3)}


def worker_kill(directory: Path, epochs: int = 40) -> dict:
    process = start(directory, epochs)
    wait_for(process, f"epoch 4/{epochs}")
    workers = [
        p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[0].startswith("ray::RayTrainWorker")
    ]
    killed_at = time.time()
    workers[-1].send_signal(signal.SIGKILL)
    process.communicate(timeout=600)
    _, recorded = events(directory)
    last_before = max(e["epoch"] for e in recorded if e["event"] == "epoch" and e["ts"] < killed_at)
    next_epoch = next(e for e in recorded if e["event"] == "epoch" and e["ts"] > killed_at)
    restored = next(e for e in recorded if e["event"] == "restored" and e["ts"] > killed_at)
    return {
        "kill_to_next_epoch_s": round(next_epoch["ts"] - killed_at, 2),
        "kill_to_restore_s": round(restored["ts"] - killed_at, 2),
        "last_epoch_before_kill": last_before,
        "resumed_from_epoch": restored["epoch"],
        "epochs_recomputed": last_before - restored["epoch"],
        "exit_code": process.returncode,
    }


def driver_kill(directory: Path, epochs: int = 40) -> dict:
    process = start(directory, epochs)
    wait_for(process, f"epoch 6/{epochs}")
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_id, before = events(directory)
    last_before = max(e["epoch"] for e in before if e["event"] == "epoch")
    started = time.monotonic()
    done = subprocess.run(
        [RTO, "resume", run_id, "--storage", str(directory / "rto-runs")], cwd=REPO, capture_output=True, text=True
    )
    _, after = events(directory)
    restored = [e for e in after if e["event"] == "restored"][-1]
    return {
        "last_epoch_before_kill": last_before,
        "resumed_from_epoch": restored["epoch"],
        "epochs_recomputed": last_before - restored["epoch"],
        "resume_wall_s": round(time.monotonic() - started, 2),
        "exit_code": done.returncode,
    }


SCENARIOS = {"cache": cache_ratio, "worker_kill": worker_kill, "driver_kill": driver_kill}


def main() -> None:
    """Run the scenarios named on the command line (default: all); merge into the results file."""
    out = REPO / "bench" / "results" / "durability.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    results["machine"] = {
        "cpus": psutil.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for name in sys.argv[1:] or SCENARIOS:
        with tempfile.TemporaryDirectory(prefix=f"rto-bench-{name}-") as directory:
            results[name] = SCENARIOS[name](Path(directory))
            print(name, json.dumps(results[name]), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
