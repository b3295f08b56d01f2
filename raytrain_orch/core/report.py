"""The run report: where a run's time and money went, from its events and its plan alone.

Per step — and per attempt, mapped item and sweep trial (``core/report_rows.py``) — its wall
time cut into queue wait, start-up, work, checkpoint stalls, time lost to restarts and hangs, and
teardown. Per gang, what it reserved × how long it held it, against what its processes used (CPU
seconds sampled on every worker; GPU busy time through NVML, or said to be unmeasured). With a
``cost:`` price table, what that cost and how much of it paid for idle reservations. Then the
run's critical path, and the one change on it that would have saved the most time.

``build`` is pure (no clock, no I/O): ``rto report`` and the end of every run call it on the run's
recorded events and its ``plan.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

from raytrain_orch.core.report_rows import PARTS, Progress, Row, Span, group, step_row, trial_row, umbrella_row
from raytrain_orch.core.utilisation import Gauge, cost_of, gauges, reserved

Record = Mapping[str, Any]


@dataclass
class StepReport:
    name: str
    kind: str  # task, train, sweep, mapped
    inputs: tuple[str, ...]
    state: str  # succeeded, failed, cached, skipped, killed, running, pending
    rows: list[Row] = field(default_factory=list)  # its attempts (a mapped step's: its own, then its items')
    gaps: list[Span] = field(default_factory=list)  # between its attempts: a retry's delay, a preempted wait
    start: float | None = None
    end: float | None = None
    bundles: tuple[Mapping[str, float], ...] = ()

    @property
    def wall_s(self) -> float:
        return 0.0 if self.start is None or self.end is None else max(0.0, self.end - self.start)

    def own_rows(self) -> list[Row]:
        """Its attempts (not its items or trials, which its attempts' time already holds)."""
        return [row for row in self.rows if row.kind in ("attempt", "sweep", "mapped")]

    def parts(self) -> dict[str, float]:
        total = dict.fromkeys(PARTS, 0.0)
        for row in self.own_rows():
            for kind, seconds in row.parts().items():
                total[kind] += seconds
        for gap in self.gaps:
            total[gap.kind] += gap.seconds
        return total

    def gang_rows(self) -> list[Row]:
        """The rows that held a gang: attempts, items and trials (a sweep's or mapped step's own do not)."""
        return [row for row in self.rows if row.kind in ("attempt", "item", "trial")]


def build_steps(records: list[Record], plan: Mapping[str, Any], run_end: float) -> list[StepReport]:
    """Every step of the plan (a mapped step with its items) with its rows."""
    units = group(records)
    steps: list[StepReport] = []
    for declared in plan.get("steps", []):
        name = declared["name"]
        bundles = tuple(declared.get("gang", {}).get("bundles", ()))
        mapped = declared.get("map_over") is not None or any(r.get("event") == "step_mapped" for r in _all(units, name))
        report = StepReport(
            name, declared.get("kind", "task"), tuple(declared.get("inputs", ())), "pending", bundles=bundles
        )
        own = units.get(name, {})
        swept = any(trial for _, trial in own)
        if mapped:
            report.kind = "mapped"
            items = sorted((u for u in units if u.startswith(f"{name}[")), key=_item_index)
            children = [row for unit in items for row in _unit_rows(unit, name, "item", units[unit], run_end)]
            for attempt in sorted(a for a, trial in own if trial is None and a is not None):
                report.rows.append(umbrella_row(name, "mapped", own[(attempt, None)], children, run_end))
            report.rows += children
        elif swept:
            report.kind = "sweep"
            for attempt in sorted({a for a, trial in own if a is not None}):
                trials = [trial_row(name, t, own[(a, t)], run_end) for a, t in own if a == attempt and t]
                records_of = own.get((attempt, None)) or [own[(a, t)][0] for a, t in own if a == attempt][:1]
                report.rows.append(umbrella_row(name, "sweep", records_of, trials, run_end))
                report.rows += sorted(trials, key=lambda row: row.start)
        else:
            report.rows = _unit_rows(name, name, "attempt", own, run_end)
        _settle(report, records, run_end)
        steps.append(report)
    return steps


def _all(units: Mapping[str, Mapping[Any, list[Record]]], name: str) -> list[Record]:
    return [r for rs in units.get(name, {}).values() for r in rs]


def _item_index(unit: str) -> int:
    inner = unit.rsplit("[", 1)[-1].rstrip("]")
    return int(inner) if inner.isdigit() else 0


def _unit_rows(unit: str, step: str, kind: str, by_attempt: Mapping[Any, list[Record]], run_end: float) -> list[Row]:
    progress = Progress()
    attempts = sorted(a for a, trial in by_attempt if trial is None and a is not None)
    return [step_row(unit, step, kind, by_attempt[(a, None)], progress, run_end) for a in attempts]


def _settle(report: StepReport, records: list[Record], run_end: float) -> None:
    """The step's state, its start and end, and the gaps between its attempts."""
    mine = [r for r in records if r.get("step") == report.name and not r.get("trial")]
    events = {r.get("event") for r in mine}
    own = report.own_rows()
    if "step_cached" in events:
        at = float(next(r["ts"] for r in mine if r.get("event") == "step_cached"))
        report.state, report.start, report.end = "cached", at, at
        return
    if "step_skipped" in events and not own:
        report.state = "skipped"
        return
    if not own:
        return
    report.start, report.end = own[0].start, max(row.end for row in report.rows)
    last = own[-1].outcome
    report.state = {"retried": "failed", "preempted": "waiting"}.get(last, last)
    for before, after in zip(own, own[1:], strict=False):
        kind = "wait" if before.outcome == "preempted" else "restart"
        report.gaps.append(
            Span(kind, before.end, max(before.end, after.start), "waiting to resume" if kind == "wait" else "retry")
        )


@dataclass
class Report:
    run_id: str
    status: str
    start: float | None
    end: float | None
    steps: list[StepReport]
    prices: Mapping[str, float] | None = None

    @property
    def wall_s(self) -> float:
        return 0.0 if self.start is None or self.end is None else max(0.0, self.end - self.start)

    def step(self, name: str) -> StepReport:
        return next(s for s in self.steps if s.name == name)

    def gauges(self) -> dict[str, Gauge]:
        """The run's CPU and GPU use over every gang it held."""
        total: dict[str, Gauge] = {}
        for step in self.steps:
            for name, gauge in gauges(step.gang_rows(), step.bundles).items():
                total.setdefault(name, Gauge()).add(gauge.reserved_s, gauge.used_s, gauge.note, gauge.unmeasured_s)
        return total

    def cost(self) -> dict[str, Any] | None:
        if not self.prices:
            return None
        estimate, idle, unmeasured = 0.0, 0.0, set[str]()
        for step in self.steps:
            found = cost_of(step.gang_rows(), step.bundles, self.prices)
            estimate += found["cost_estimate"]
            idle += found["idle_cost"]
            unmeasured |= set(found["idle_unmeasured"])
        return {
            "cost_estimate": estimate,
            "idle_cost": idle,
            "idle_unmeasured": sorted(unmeasured),
            "prices": dict(self.prices),
        }

    def critical_path(self) -> list[StepReport]:
        """The chain of steps the run's end waited on: from the step that ended last, back through
        the input that ended last before it began."""
        ran = {s.name: s for s in self.steps if s.end is not None}
        if not ran:
            return []
        path = [max(ran.values(), key=lambda s: s.end or 0.0)]
        while True:
            inputs = [ran[name] for name in path[-1].inputs if name in ran]
            if not inputs:
                return path[::-1]
            path.append(max(inputs, key=lambda s: s.end or 0.0))

    def advice(self) -> dict[str, Any] | None:
        """The one change on the critical path that would have saved the most time."""
        best: tuple[float, StepReport, str] | None = None
        for step in self.critical_path():
            parts = step.parts()
            for part in ("wait", "startup", "checkpoint", "restart", "hang"):
                if parts[part] > 0 and (best is None or parts[part] > best[0]):
                    best = (parts[part], step, part)
        if best is None or best[0] < 0.5:
            return None
        seconds, step, part = best
        return {
            "step": step.name,
            "part": part,
            "seconds": round(seconds, 2),
            "text": _ADVICE[part](step.name, seconds),
        }

    def to_dict(self) -> dict[str, Any]:
        path = self.critical_path()
        return {
            "run_id": self.run_id,
            "status": self.status,
            "start": self.start,
            "end": self.end,
            "wall_s": round(self.wall_s, 3),
            "parts": PARTS,
            "steps": [_step_dict(s, self.prices) for s in self.steps],
            "utilisation": {name: gauge.to_dict() for name, gauge in self.gauges().items()},
            "cost": _rounded(self.cost()),
            "critical_path": {
                "steps": [s.name for s in path],
                "wall_s": round(sum(s.wall_s for s in path), 3),
                "parts": {k: round(sum(s.parts()[k] for s in path), 3) for k in PARTS},
            },
            "advice": self.advice(),
        }


_ADVICE: Mapping[str, Callable[[str, float], str]] = MappingProxyType(
    {
        "wait": lambda step, s: (
            f"{step} waited {s:.0f} s for its gang: raise admission.priority, give its queue more quota (`rto queue`), "
            "or ask for fewer resources"
        ),
        "startup": lambda step, s: (
            f"{step} took {s:.0f} s to start: keep the local runtime warm (ray.runtime: shared) and import heavy "
            "modules inside the step"
        ),
        "checkpoint": lambda step, s: (
            f"{step} stood still {s:.0f} s for checkpoints: report live modules (sharded, written in the background) "
            "or checkpoint less often"
        ),
        "restart": lambda step, s: (
            f"{step} lost {s:.0f} s to restarts (recovery and redone work): checkpoint every epoch, and fix the cause "
            f"of its failures (rto logs --step {step})"
        ),
        "hang": lambda step, s: (
            f"{step} sat hung {s:.0f} s before it was ended: lower its hang limit (steps.{step}.hang_timeout_s)"
        ),
    }
)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def _row_dict(row: Row, bundles: tuple[Mapping[str, float], ...], prices: Mapping[str, float] | None) -> dict[str, Any]:
    usage = gauges([row], bundles)
    return {
        "key": row.key,
        "kind": row.kind,
        "label": row.label,
        "attempt": row.attempt,
        "outcome": row.outcome,
        "start": row.start,
        "end": row.end,
        "wall_s": round(row.wall_s, 3),
        "parts": {k: round(v, 3) for k, v in row.parts().items()},
        "unaccounted_s": round(row.unaccounted_s, 3),
        "held_s": round(row.held_s, 3),
        "reserved": reserved(bundles, row.world_size) if row.kind != "sweep" and row.kind != "mapped" else {},
        "utilisation": {name: gauge.to_dict() for name, gauge in usage.items()} if row.admitted is not None else {},
        "gpu_memory_mb": row.usage.gpu_memory_mb,
        "cost": _rounded(cost_of([row], bundles, prices)) if prices and row.admitted is not None else None,
        "spans": [[span.kind, round(span.start, 4), round(span.end, 4), span.label] for span in row.spans],
        "marks": [[kind, round(at, 4), text] for kind, at, text in row.marks],
    }


def _step_dict(step: StepReport, prices: Mapping[str, float] | None) -> dict[str, Any]:
    parts = step.parts()
    return {
        "name": step.name,
        "kind": step.kind,
        "state": step.state,
        "inputs": list(step.inputs),
        "start": step.start,
        "end": step.end,
        "wall_s": round(step.wall_s, 3),
        "parts": {k: round(v, 3) for k, v in parts.items()},
        "unaccounted_s": round(step.wall_s - sum(parts.values()), 3),
        "utilisation": {name: gauge.to_dict() for name, gauge in gauges(step.gang_rows(), step.bundles).items()},
        "cost": _rounded(cost_of(step.gang_rows(), step.bundles, prices)) if prices else None,
        "rows": [_row_dict(row, step.bundles, prices) for row in step.rows],
        "gaps": [[gap.kind, round(gap.start, 4), round(gap.end, 4), gap.label] for gap in step.gaps],
    }


def build(
    records: Iterable[Record],
    plan: Mapping[str, Any],
    prices: Mapping[str, float] | None = None,
    now: float | None = None,
    status: str | None = None,
) -> Report:
    """The report of a run from its recorded events (oldest first) and its plan (``Plan.to_dict()``,
    or ``plan.json``); ``now`` ends what is still running (default: its last event); ``status``:
    the run's, when it ended but its ``run_finished`` is not recorded yet."""
    records = list(records)
    run_id = next((str(r["run_id"]) for r in records if r.get("run_id")), "")
    started = [float(r["ts"]) for r in records if r.get("event") in ("run_started", "run_resumed")]
    finished = [r for r in records if r.get("event") == "run_finished"]
    last = max((float(r.get("ts") or 0.0) for r in records), default=None)
    end = float(finished[-1]["ts"]) if finished else (now if now is not None else last)
    status = str(finished[-1].get("status", "")).lower() if finished else (status or "running")
    steps = build_steps(records, plan, end or 0.0)
    return Report(run_id, status, min(started) if started else None, end, steps, prices)
