"""Print the tables of docs/benchmarks.md from bench/results/overhead.json, scale.json and
streaming.json.

.venv/bin/python bench/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _before_per_step(numbers: dict, bare: float) -> str:
    """A shape's per-step orchestration with the code ``bench/scale.py --before`` ran, if it did."""
    before = numbers.get("before")
    return f"{before['cold']['per_step_ms'] - bare:.0f} ms" if before else "–"


def main() -> None:
    o = json.loads((RESULTS / "overhead.json").read_text())
    s = json.loads((RESULTS / "scale.json").read_text())
    walls, n = o["wall_s"], o["workloads"]["large"]["epochs"]
    large_key = next(k for k in o["ratio"]["shared"] if k.startswith("large"))

    def wall(key: str) -> str:
        w = walls[key]
        return f"{w['median']:.1f} s ({w['min']:.1f}–{w['max']:.1f})"

    sweep = s.get("sweep", {})
    chain, fan = s["pipelines"]["chain"], s["pipelines"]["fan"]
    bare = s["bare_ray_task_round_trip"]["median_ms"]
    ratio, fixed = o["ratio"], o["fixed_startup_overhead_s"]
    start = o["train_step_admission_to_first_epoch_s"]
    cached = o["cached_rerun_fraction_of_cold"]
    plain_epoch_ms = 1000 * (walls["plain large"]["median"] - walls["plain 1-epoch"]["median"]) / (n - 1)

    def steady(mode: str) -> float:
        """An epoch's time past the first, rto over plain (the marginal per-epoch overhead)."""
        return 1 + o["marginal_per_epoch_overhead_ms"][mode] / plain_epoch_ms

    print(f"| figure | target | before ({o.get('before', 'before')}) | now | met |\n|---|---|---|---|---|")
    checks = [
        (
            "the demo (20 epochs) / plain",
            "≤ 2.0×",
            f"{ratio['before']['small (20 epochs)']:.2f}×",
            f"{ratio['shared']['small (20 epochs)']:.2f}× (first run of a session: {ratio['first (small)']:.2f}×)",
            ratio["shared"]["small (20 epochs)"] <= 2.0,
        ),
        (
            "1-epoch runs at hidden 2048, rto / plain",
            "≤ 2.5×",
            f"{ratio['before']['1-epoch (hidden 2048)']:.2f}×",
            f"{ratio['shared']['1-epoch (hidden 2048)']:.2f}×",
            ratio["shared"]["1-epoch (hidden 2048)"] <= 2.5,
        ),
        (
            "fixed start-up overhead (1-epoch runs)",
            "≈ 8 s",
            f"{fixed['before']:.1f} s",
            f"{fixed['shared']:.1f} s",
            fixed["shared"] <= 8,
        ),
        (
            f"~1-minute workload ({n} epochs), rto / plain",
            "≤ 1.15×",
            f"{ratio['before'][large_key]:.2f}×",
            f"{ratio['shared'][large_key]:.2f}×",
            ratio["shared"][large_key] <= 1.15,
        ),
        (
            f"steady state: an epoch at hidden 2048 / batch 16, rto / plain (epochs 2–{n})",
            "≤ 1.03×",
            f"{steady('before'):.3f}×",
            f"{steady('shared'):.3f}× ({o['marginal_per_epoch_overhead_ms']['shared']:+.1f} ms an epoch)",
            steady("shared") <= 1.03,
        ),
        ("cached re-run / cold run", "≤ 5 %", "–", f"{100 * cached:.1f} %", cached <= 0.05),
        (
            "a train step from its admission to its first epoch",
            "≤ 5 s",
            f"{start['before']:.1f} s",
            f"{start['shared']:.1f} s (a bare TorchTrainer: {o['bare_torchtrainer_fit_to_loop_s']['median']:.1f} s)",
            start["shared"] <= 5,
        ),
        (
            "orchestration per task step, 200-step chain (minus a bare task)",
            "≤ 20 ms",
            _before_per_step(chain, bare),
            f"{chain['cold']['per_step_ms'] - bare:.0f} ms",
            chain["cold"]["per_step_ms"] - bare <= 20,
        ),
        (
            "orchestration per task step, 200-step fan-out/fan-in",
            "≤ 20 ms",
            _before_per_step(fan, bare),
            f"{fan['cold']['per_step_ms'] - bare:.0f} ms",
            fan["cold"]["per_step_ms"] - bare <= 20,
        ),
    ]
    if sweep and "trial_overhead_s (a trial's wall time minus its epochs' own work)" in sweep:
        overhead = sweep["trial_overhead_s (a trial's wall time minus its epochs' own work)"]["median"]
        checks.append(
            ("sweep: a trial's wall time minus its epochs' work", "≤ 3 s", "–", f"{overhead:.1f} s", overhead <= 3)
        )
    for name, target, before, now, met in checks:
        print(row(name, target, before, now, "yes" if met else "**no**"))

    print("\n| run | rto before | rto now | plain PyTorch | ratio now |\n|---|---|---|---|---|")
    for label, key in (
        ("20 epochs (default)", "small"),
        ("1 epoch, hidden 2048, batch 16", "1-epoch"),
        (f"{n} epochs, hidden 2048, batch 16", "large"),
    ):
        print(
            row(
                label,
                wall(f"rto before {key}"),
                wall(f"rto shared {key}"),
                wall(f"plain {key}"),
                f"{walls[f'rto shared {key}']['median'] / walls[f'plain {key}']['median']:.2f}",
            )
        )
    print(row("20 epochs, the first run of a session (starts the runtime)", "", wall("rto first small"), "", ""))
    print(
        row(
            "20 epochs again, unchanged (all cached)",
            "",
            wall("rto shared small cached"),
            "",
            f"{cached:.3f} of the cold run",
        )
    )

    breakdowns = next(v for k, v in o.items() if k.startswith("breakdown"))
    modes = [m for m in ("before", "first", "shared") if m in breakdowns]
    print(f"\n| where a 20-epoch `rto run` spends its time (s) | {' | '.join(modes)} |\n|---|{'---|' * len(modes)}")
    names = list(dict.fromkeys(name for m in modes for name in breakdowns[m]))  # a mode's code may record less
    for name in names:
        print(row(name, *(f"{breakdowns[m][name]:.2f}" if name in breakdowns[m] else "–" for m in modes)))

    print("\n| 200 task steps | cold: run time | per step | cached: run time | per step |\n|---|---|---|---|---|")
    for shape, numbers in s["pipelines"].items():
        c, k = numbers["cold"], numbers["cached"]
        print(
            row(
                shape,
                f"{c['run_s']:.1f} s",
                f"{c['per_step_ms']:.1f} ms",
                f"{k['run_s']:.1f} s",
                f"{k['per_step_ms']:.1f} ms",
            )
        )
    print(row("one bare Ray task round trip", "", f"{bare:.2f} ms", "", ""))
    if sweep:
        print(f"\nsweep: {json.dumps(sweep)}")
    streaming()


def streaming() -> None:
    """The tables of the storage and streaming section (bench/streaming.py)."""
    path = RESULTS / "streaming.json"
    if not path.exists():
        return
    r = json.loads(path.read_text())
    st = r["storage"]
    print("\n| digits pipeline (20 epochs) | local directory | S3 API (moto on 127.0.0.1) | S3 / local |")
    print("|---|---|---|---|")
    print(
        row(
            f"wall time, median of {len(st['wall_s']['local'])}",
            f"{st['median_s']['local']:.1f} s",
            f"{st['median_s']['s3']:.1f} s",
            f"{st['ratio_s3_to_local']:.2f}×",
        )
    )
    print(
        "\n| rows (1 epoch, streamed) | peak private memory of a train worker | its peak RSS "
        "| training samples/s | test accuracy |"
    )
    print("|---|---|---|---|---|")
    for run in r["streamed"]:
        print(
            row(
                f"{run['rows']:,}",
                f"{run['peak_private_mb_per_worker']:.0f} MB",
                f"{run['peak_rss_mb_per_worker']:.0f} MB",
                f"{run['train_samples_per_s'][-1]:,.0f}",
                f"{run['test_accuracy']:.3f}",
            )
        )
    print(
        f"\nlargest / smallest over the sizes: private memory +{100 * r['peak_private_mb_per_worker_spread']:.1f} %, "
        f"RSS +{100 * r['peak_rss_mb_per_worker_spread']:.1f} % (target: within ±20 %)"
    )
    both = r["stream_vs_memory"]
    print(f"\n| {both['rows']:,} rows, 2 epochs | peak private memory | peak RSS | samples/s, epoch 2 |")
    print("|---|---|---|---|")
    for label, run in (("streamed (Ray Data shards)", both["streamed"]), ("in memory (DataLoader)", both["in_memory"])):
        print(
            row(
                label,
                f"{run['peak_private_mb_per_worker']:.0f} MB",
                f"{run['peak_rss_mb_per_worker']:.0f} MB",
                f"{run['train_samples_per_s'][-1]:,.0f}",
            )
        )
    print(f"\nstreamed / in memory, samples/s: {both['speed_ratio']:.2f}×")


if __name__ == "__main__":
    main()
