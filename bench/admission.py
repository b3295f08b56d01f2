"""Admission throughput and preflight latency, side by side in one run.

1. Gangs per second, alternating rounds of:
   - raw: ``placement_group`` create + ``ready`` + ``remove`` (what Ray alone costs);
   - lease: a lease from the admission queue alone (the queue's own bookkeeping);
   - lease + group: a lease, then the placement group inside it (what every task step pays);
   for a small gang ([{CPU: 0.1}]) and a whole-cluster gang ([{CPU: 1}, {CPU: 1}]).
2. Contention: 4 threads each taking 5 whole-cluster gangs through the queue (lease + group):
   all 20 granted one at a time; the wall time against 20 sequential raw groups.
3. Preflight: wall time of ``rto run`` and ``rto plan`` on ``configs/digits_gpu.yaml`` (infeasible
   on a CPU-only machine: exit 3 before Ray starts).

    .venv/bin/python bench/admission.py        # → bench/results/admission.json
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RTO = str(Path(sys.executable).parent / "rto")
sys.path.insert(0, str(REPO))

import ray  # noqa: E402
from ray.util.placement_group import placement_group, remove_placement_group  # noqa: E402

from raytrain_orch.core.config import RayConfig  # noqa: E402
from raytrain_orch.core.placement import GangSpec  # noqa: E402
from raytrain_orch.ray import gangs, leases, session  # noqa: E402

SMALL = GangSpec(({"CPU": 0.1},))
WHOLE = GangSpec(({"CPU": 1.0}, {"CPU": 1.0}))
ROUNDS = 5


def raw(gang: GangSpec, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        group = placement_group([dict(b) for b in gang.bundles], strategy=gang.strategy)
        ray.get(group.ready())
        remove_placement_group(group)
    return time.perf_counter() - started


def lease(gang: GangSpec, n: int) -> float:
    client, started = leases.Leases(), time.perf_counter()
    for _ in range(n):
        with client.admitted(gang, "bench/lease"):
            pass
    return time.perf_counter() - started


def lease_and_group(gang: GangSpec, n: int) -> float:
    client, started = leases.Leases(), time.perf_counter()
    for _ in range(n):
        with client.admitted(gang, "bench/step"), gangs.reserved(gang, "bench"):
            pass
    return time.perf_counter() - started


def per_second(ways: dict, gang: GangSpec, n: int) -> dict:
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(ROUNDS):  # alternate, so drift hits every way alike
        for name, way in ways.items():
            times[name].append(way(gang, n))
    result = {}
    for name, values in times.items():
        rates = [n / t for t in values]
        result[name] = {
            "gangs_per_s_median": round(statistics.median(rates), 2),
            "min": round(min(rates), 2),
            "max": round(max(rates), 2),
            "ms_per_gang_median": round(1000 * statistics.median(values) / n, 2),
        }
    base = result["raw_placement_group"]["ms_per_gang_median"]
    for name in result:
        result[name]["time_ratio_vs_raw"] = round(result[name]["ms_per_gang_median"] / base, 3)
    return result


def contention(threads: int = 4, each: int = 5) -> dict:
    order: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        client = leases.Leases()
        for _ in range(each):
            with client.admitted(WHOLE, f"bench/{name}"), gangs.reserved(WHOLE, "bench"):
                with lock:
                    order.append(name)

    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(600)
    queued = time.perf_counter() - started
    sequential = raw(WHOLE, threads * each)
    return {
        "gangs": threads * each,
        "granted": len(order),
        "queue_wall_s": round(queued, 2),
        "raw_sequential_wall_s": round(sequential, 2),
        "time_ratio_vs_raw": round(queued / sequential, 3),
    }


def preflight(repeats: int = 3) -> dict:
    result = {}
    fresh = tempfile.mkdtemp(prefix="rto-bench-")  # no cache: a fully cached run needs no resources at all
    isolated = ["--set", f"storage={fresh}/rto-runs", "--set", f"mlflow.tracking_uri=sqlite:///{fresh}/mlflow.db"]
    for command in ("run", "plan"):
        walls, codes = [], set()
        for _ in range(repeats):
            started = time.monotonic()
            done = subprocess.run(
                [RTO, command, "configs/digits_gpu.yaml", *isolated], cwd=REPO, capture_output=True, text=True
            )
            walls.append(time.monotonic() - started)
            codes.add(done.returncode)
        result[f"rto_{command}"] = {
            "wall_s_median": round(statistics.median(walls), 2),
            "min": round(min(walls), 2),
            "max": round(max(walls), 2),
            "exit_codes": sorted(codes),
            "message": (done.stderr.strip().splitlines() or [""])[-1],
        }
    return result


def main() -> None:
    session.connect(RayConfig(num_cpus=2))
    ways = {"raw_placement_group": raw, "queue_lease_only": lease, "queue_lease_and_group": lease_and_group}
    lease(SMALL, 3)  # create the queue's actor before timing
    results = {
        "machine": {
            "cpus": 2,
            "python": platform.python_version(),
            "ray": ray.__version__,
            "platform": platform.platform(),
        },
        "small_gang_1x_cpu0.1": per_second(ways, SMALL, 50),
        "whole_cluster_gang_2x_cpu1": per_second(ways, WHOLE, 5),
        "contention_4_threads_whole_cluster": contention(),
    }
    ray.shutdown()
    results["preflight_infeasible_digits_gpu"] = preflight()
    out = REPO / "bench" / "results" / "admission.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
