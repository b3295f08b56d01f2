"""The run report as ``rto report`` prints it (and as ``report.txt`` beside the timeline in MLflow):
the run's line, a table of its steps with their attempts, items and trials under them, then the
critical path and the biggest saving. Pure text from ``Report.to_dict()``."""

from __future__ import annotations

from typing import Any, Mapping

from raytrain_orch.core.report_rows import PARTS
from raytrain_orch.core.text import duration

#: Rows shown under one step before the rest are counted (``--json`` has them all).
ROWS_SHOWN = 12
_HEADER = ("STEP", "STATE", "WALL", "WAIT", "START-UP", "WORK", "CKPT", "RESTART", "HANG", "TEARDOWN", "CPU", "GPU")


def render(report: Mapping[str, Any]) -> str:
    lines = [_run_line(report), *_cost_lines(report.get("cost")), ""]
    rows: list[tuple[str, ...]] = [_HEADER]
    for step in report["steps"]:
        rows.append(_row(step["name"], step["state"], step))
        children = [row for row in step["rows"] if row["kind"] != "attempt" or len(step["rows"]) > 1]
        for row in children[:ROWS_SHOWN]:
            rows.append(_row(f"  {row['label']}", row["outcome"], row))
        if len(children) > ROWS_SHOWN:
            rows.append((f"  … {len(children) - ROWS_SHOWN} more (rto report --json)",) + ("",) * (len(_HEADER) - 1))
    lines += _table(rows)
    lines += ["", *_unaccounted(report), *_path_lines(report)]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _run_line(report: Mapping[str, Any]) -> str:
    use = report.get("utilisation") or {}
    return f"run {report['run_id']}  {report['status']}  wall {duration(report.get('wall_s'))}  " + "  ".join(
        gauge_line(name, use.get(name)) for name in ("CPU", "GPU")
    )


def gauge_line(name: str, gauge: Mapping[str, Any] | None) -> str:
    """A resource's use over the run; an unmeasured one says so rather than showing a zero."""
    if gauge is None:
        return f"{name}: none reserved"
    if not gauge.get("measured"):
        return f"{name}: not measured ({gauge.get('note') or 'no usage record'})"
    seconds = float(gauge["reserved_s"])
    amount = f"{seconds / 3600:.3g} {name}-h" if seconds >= 360 else f"{seconds:.0f} {name}-s"
    unmeasured = gauge.get("unmeasured_s") or 0.0
    part = f" ({100 * unmeasured / seconds:.0f} % of it not measured)" if unmeasured else ""
    return f"{name}: {percent(gauge.get('efficiency'))} used of {amount} reserved{part}"


def _cost_lines(cost: Mapping[str, Any] | None) -> list[str]:
    if not cost:
        return []
    prices = ", ".join(f"{k} {v:g}" for k, v in cost["prices"].items())
    unmeasured = cost.get("idle_unmeasured") or []
    note = f"; {', '.join(unmeasured)} counted as busy (not measured)" if unmeasured else ""
    return [
        f"cost estimate {cost['cost_estimate']:.4f}, of it idle reservations {cost['idle_cost']:.4f} "
        f"(per resource-hour: {prices}{note})"
    ]


def _row(name: str, state: str, data: Mapping[str, Any]) -> tuple[str, ...]:
    parts = data.get("parts") or {}
    use = data.get("utilisation") or {}
    cells = [_seconds(parts.get(part)) for part in PARTS]
    gpu = use.get("GPU")
    return (
        name,
        state,
        duration(data.get("wall_s")) if data.get("end") is not None else "-",
        *cells,
        percent((use.get("CPU") or {}).get("efficiency")),
        "-" if gpu is None else (percent(gpu.get("efficiency")) if gpu.get("measured") else "n/m"),
    )


def _seconds(value: float | None) -> str:
    return "-" if not value else f"{value:.1f}"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows if len(row) > i) for i in range(len(_HEADER))]
    out = []
    for row in rows:
        if len(row) == 1 or all(cell == "" for cell in row[1:]):
            out.append(row[0])
            continue
        out.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)))
    return out


def _unaccounted(report: Mapping[str, Any]) -> list[str]:
    off = [
        f"{s['name']} {s['unaccounted_s']:+.1f} s"
        for s in report["steps"]
        if s.get("wall_s") and abs(s["unaccounted_s"]) > 0.02 * s["wall_s"] + 0.05
    ]
    return [f"not accounted for (clocks or lost records): {', '.join(off)}"] if off else []


def _path_lines(report: Mapping[str, Any]) -> list[str]:
    path = report.get("critical_path") or {}
    lines = []
    if path.get("steps"):
        parts = sorted(((v, k) for k, v in (path.get("parts") or {}).items() if v >= 0.05), reverse=True)
        shares = ", ".join(f"{k} {v:.1f} s" for v, k in parts)
        lines.append(
            f"critical path: {' → '.join(path['steps'])} ({duration(path.get('wall_s'))}{': ' * bool(shares)}{shares})"
        )
    advice = report.get("advice")
    lines.append(f"biggest saving: {advice['text']}" if advice else "biggest saving: none worth a change")
    return lines
