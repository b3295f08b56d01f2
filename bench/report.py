"""Print the tables of docs/benchmarks.md from bench/results/overhead.json and scale.json.

.venv/bin/python bench/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main() -> None:
    o = json.loads((RESULTS / "overhead.json").read_text())
    s = json.loads((RESULTS / "scale.json").read_text())
    walls, n = o["wall_s"], o["workloads"]["large"]["epochs"]
    large_key = next(k for k in o["ratio"] if k.startswith("large"))

    def wall(key: str) -> str:
        w = walls[key]
        return f"{w['median']:.1f} s ({w['min']:.1f}–{w['max']:.1f})"

    sweep = s.get("sweep", {})
    chain, fan = s["pipelines"]["chain"], s["pipelines"]["fan"]
    bare = s["bare_ray_task_round_trip"]["median_ms"]
    print("| measure | target | measured | met |\n|---|---|---|---|")
    checks = [
        (
            f"wall-time ratio, ~1-minute workload ({n} epochs)",
            "≤ 1.15",
            f"{o['ratio'][large_key]:.2f}",
            o["ratio"][large_key] <= 1.15,
        ),
        (
            "fixed start-up overhead (1-epoch runs)",
            "≤ 8 s",
            f"{o['fixed_startup_overhead_s']:.1f} s",
            o["fixed_startup_overhead_s"] <= 8,
        ),
        (
            "marginal per-epoch overhead",
            "≤ 50 ms",
            f"{o['marginal_per_epoch_overhead_ms']:.0f} ms",
            o["marginal_per_epoch_overhead_ms"] <= 50,
        ),
        (
            "cached re-run / cold run",
            "≤ 5 %",
            f"{100 * o['cached_rerun_fraction_of_cold']:.1f} %",
            o["cached_rerun_fraction_of_cold"] <= 0.05,
        ),
        (
            "orchestration per task step, 200-step chain (minus a bare task)",
            "≤ 20 ms",
            f"{chain['cold']['per_step_ms'] - bare:.0f} ms",
            chain["cold"]["per_step_ms"] - bare <= 20,
        ),
        (
            "orchestration per task step, 200-step fan-out/fan-in",
            "≤ 20 ms",
            f"{fan['cold']['per_step_ms'] - bare:.0f} ms",
            fan["cold"]["per_step_ms"] - bare <= 20,
        ),
    ]
    if sweep:
        checks += [
            (
                f"sweep bookkeeping per trial ({sweep['trials']} trials, driver CPU)",
                "≤ 1 s",
                f"{sweep['driver_cpu_s_per_trial']:.2f} s",
                sweep["driver_cpu_s_per_trial"] <= 1,
            ),
            (
                "sweep driver memory growth per trial",
                "flat",
                f"{sweep['driver_rss_growth_kb_per_trial']:.0f} KB",
                abs(sweep["driver_rss_growth_kb_per_trial"]) < 256,
            ),
        ]
    for name, target, measured, met in checks:
        print(row(name, target, measured, "yes" if met else "**no**"))

    print("\n| run | rto | plain PyTorch | ratio |\n|---|---|---|---|")
    for label, key in (
        ("20 epochs (default)", "small"),
        ("1 epoch, hidden 2048, batch 16", "1-epoch"),
        (f"{n} epochs, hidden 2048, batch 16", "large"),
    ):
        print(
            row(
                label,
                wall(f"rto {key}"),
                wall(f"plain {key}"),
                f"{walls[f'rto {key}']['median'] / walls[f'plain {key}']['median']:.2f}",
            )
        )
    print(
        row(
            "20 epochs again, unchanged (all cached)",
            wall("rto small cached"),
            "–",
            f"{o['cached_rerun_fraction_of_cold']:.3f} of the cold run",
        )
    )

    print("\n| where a cold `rto run` (20 epochs) spends its time | seconds |\n|---|---|")
    for name, seconds in next(v for k, v in o.items() if k.startswith("breakdown")).items():
        print(row(name, f"{seconds:.3f}"))

    settings = next(v for k, v in o.items() if k.startswith("settings"))
    label = next(k for k in o if k.startswith("settings"))
    print(
        f"\n| Ray Train settings, {label[len('settings ') :]} | wall | report + checkpoint per epoch |\n|---|---|---|"
    )
    for who in ("ray defaults", "project defaults"):
        w, r = settings[f"{who}: wall"], settings[f"{who}: report per epoch"]
        print(row(who, f"{w['median']:.1f} s ({w['min']:.1f}–{w['max']:.1f})", f"{1000 * r['median']:.0f} ms"))

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


if __name__ == "__main__":
    main()
