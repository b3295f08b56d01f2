"""Object storage and streaming, measured side by side in one run.

1. The digits pipeline (20 epochs) with its storage root on an S3 API (moto's server on
   127.0.0.1, as in the tests) against a local directory, alternating, ``--rounds`` each.
2. The synthetic pipeline (jobs/synthetic.py), one epoch streamed at 10⁵, 10⁶ and 10⁷ rows: the
   peak RSS of the largest train worker (``peak_rss_mb``, max over ranks), its peak private
   memory (resident minus shared pages, ``peak_private_mb``: RSS also counts the pages of the
   node's shared object store the worker has read blocks from) and the training loop's
   samples/s; and, at 10⁶ rows where both fit, streamed against read whole into each worker's
   memory (``train.params.stream=false``: a DataLoader with a DistributedSampler, the plain
   PyTorch way), 2 epochs each, the second epoch's speed compared.

    .venv/bin/python bench/streaming.py [--rounds 2] [--sizes 100000,1000000,10000000]

Writes bench/results/streaming.json; bench/report.py prints its table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raytrain_orch.store.state import RunStore  # noqa: E402
from raytrain_orch.store.storage import Storage  # noqa: E402
from tests.object_store import s3_server  # noqa: E402

RTO = str(Path(sys.executable).parent / "rto")
RESULTS = ROOT / "bench" / "results" / "streaming.json"


def rto_run(config: str, storage: str, workdir: Path, *sets: str, env: dict[str, str] | None = None) -> dict:
    """One `rto run`, timed; its run record and events."""
    overrides = [f"storage={storage}", f"mlflow.tracking_uri=sqlite:///{workdir / 'mlflow.db'}", *sets]
    began = time.perf_counter()
    done = subprocess.run(
        [RTO, "run", config, "--no-cache", *[a for s in overrides for a in ("--set", s)]],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"rto run {config} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    store = RunStore(Storage(storage))
    state = store.latest()
    return {"wall_s": wall, "state": state, "events": store.events(state.run_id)}


def epochs(run: dict) -> list[dict]:
    return [e for e in run["events"] if e["event"] == "epoch"]


def storage_comparison(rounds: int, workdir: Path) -> dict:
    walls: dict[str, list[float]] = {"local": [], "s3": []}
    with s3_server() as s3:
        os.environ.update(s3.env())  # this process reads the run records back from the bucket too
        bucket = s3.bucket()
        for index in range(rounds):
            for side in ("local", "s3"):
                storage = str(workdir / f"digits-{index}") if side == "local" else f"s3://{bucket}/digits-{index}"
                run = rto_run("configs/digits.yaml", storage, workdir / f"{side}-{index}", env=s3.env())
                walls[side].append(round(run["wall_s"], 2))
                print(f"digits on {side}: {run['wall_s']:.1f} s", flush=True)
    local, s3_median = statistics.median(walls["local"]), statistics.median(walls["s3"])
    return {"wall_s": walls, "median_s": {"local": local, "s3": s3_median}, "ratio_s3_to_local": s3_median / local}


def synthetic(rows: int, workdir: Path, stream: bool, epochs_n: int) -> dict:
    sets = [
        f"prepare.params.rows={rows}",
        "prepare.params.rows_per_part=100000",  # one block size at every size
        f"train.params.epochs={epochs_n}",
        f"train.params.stream={'true' if stream else 'false'}",
    ]
    run = rto_run("configs/synthetic.yaml", str(workdir / f"synthetic-{rows}-{stream}"), workdir, *sets)
    reported = epochs(run)
    result = {
        "rows": rows,
        "stream": stream,
        "wall_s": round(run["wall_s"], 1),
        "peak_rss_mb_per_worker": max(e["metrics"]["peak_rss_mb"] for e in reported),
        "peak_private_mb_per_worker": max(e["metrics"]["peak_private_mb"] for e in reported),
        "train_samples_per_s": [e["metrics"]["train_samples_per_s"] for e in reported],
        "test_accuracy": run["state"].steps["evaluate"].metrics["test_accuracy"],
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sizes", default="100000,1000000,10000000")
    parser.add_argument("--only", choices=["storage", "streaming"], help="run one part; keep the other's results")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict = json.loads(RESULTS.read_text()) if args.only and RESULTS.exists() else {}
    results.update(when=time.strftime("%Y-%m-%d %H:%M"), cpus=os.cpu_count())
    with tempfile.TemporaryDirectory(prefix="rto-bench-streaming-") as tmp:
        workdir = Path(tmp)
        if args.only != "streaming":
            results["storage"] = storage_comparison(args.rounds, workdir)
        if args.only == "storage":
            RESULTS.write_text(json.dumps(results, indent=2) + "\n")
            return
        results["streamed"] = [synthetic(rows, workdir, True, 1) for rows in sizes]
        for metric in ("peak_rss_mb_per_worker", "peak_private_mb_per_worker"):
            peaks = [r[metric] for r in results["streamed"]]
            results[f"{metric}_spread"] = round(max(peaks) / min(peaks) - 1, 3)
        both = 1_000_000 if 1_000_000 in sizes else sizes[0]
        streamed, in_memory = synthetic(both, workdir, True, 2), synthetic(both, workdir, False, 2)
        results["stream_vs_memory"] = {
            "rows": both,
            "streamed": streamed,
            "in_memory": in_memory,
            "speed_ratio": streamed["train_samples_per_s"][-1] / in_memory["train_samples_per_s"][-1],
        }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
