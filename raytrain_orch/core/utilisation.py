"""A gang's reservation against its use, and what it cost: the run report's arithmetic.

A row (an attempt, item or trial that held a gang) reserved its gang's resources from its
admission to its end; its processes' ``usage`` records say what they used. CPU is always
measured; GPU where NVML answered; other resources (memory, custom ones) are not, and are named
where that matters (idle cost). Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from raytrain_orch.core.report_rows import Row

#: GiB: Ray's ``memory`` resource is in bytes, priced per GiB-hour.
_GIB = 2.0**30


def reserved(bundles: Iterable[Mapping[str, float]], world_size: int | None = None) -> dict[str, float]:
    """A gang's resources: its bundles' sum (an elastic group's: its first bundle × its size)."""
    bundles = list(bundles)
    if world_size is not None and bundles:
        bundles = [bundles[0]] * world_size
    total: dict[str, float] = {}
    for bundle in bundles:
        for name, amount in bundle.items():
            total[name] = total.get(name, 0.0) + float(amount)
    return total


@dataclass
class Gauge:
    """One resource's use: reserved-seconds against used-seconds. Rows whose use is unknown (a
    process killed before its first sample; a GPU without NVML) add to ``unmeasured_s`` and are left
    out of the efficiency, never counted as idle; ``used_s`` is None when no row was measured."""

    reserved_s: float = 0.0
    used_s: float | None = None
    unmeasured_s: float = 0.0
    note: str = ""

    @property
    def measured_s(self) -> float:
        """The reserved-seconds whose use is known."""
        return self.reserved_s - self.unmeasured_s

    @property
    def efficiency(self) -> float | None:
        if self.used_s is None or self.measured_s <= 0:
            return None
        return min(1.0, self.used_s / self.measured_s)

    def add(self, reserved_s: float, used_s: float | None, note: str = "", unmeasured_s: float | None = None) -> None:
        """Add a row's (or another gauge's) reservation and use; ``unmeasured_s`` (a gauge's) defaults
        to all of ``reserved_s`` when ``used_s`` is None, else none of it."""
        self.reserved_s += reserved_s
        self.unmeasured_s += (reserved_s if used_s is None else 0.0) if unmeasured_s is None else unmeasured_s
        if used_s is not None:
            self.used_s = (self.used_s or 0.0) + used_s
        if note and (used_s is None or unmeasured_s):
            self.note = self.note or note

    def to_dict(self) -> dict[str, Any]:
        return {
            "reserved_s": round(self.reserved_s, 3),
            "used_s": round(self.used_s, 3) if self.used_s is not None else None,
            "efficiency": round(self.efficiency, 4) if self.efficiency is not None else None,
            "measured": self.used_s is not None,
            **({"unmeasured_s": round(self.unmeasured_s, 3)} if self.unmeasured_s > 0 else {}),
            **({"note": self.note} if self.note else {}),
        }


def gauges(rows: Iterable[Row], bundles: tuple[Mapping[str, float], ...]) -> dict[str, Gauge]:
    """CPU and GPU use of the rows that held a gang."""
    found = {"CPU": Gauge(), "GPU": Gauge()}
    for row in rows:
        gang = reserved(bundles, row.world_size)
        held = row.held_s
        found["CPU"].add(gang.get("CPU", 0.0) * held, row.usage.cpu_s if row.usage.processes else None, _cpu_note(row))
        if gang.get("GPU"):
            note = "; ".join(sorted(row.usage.gpu_notes)) or "no GPU measurement arrived"
            found["GPU"].add(gang["GPU"] * held, row.usage.gpu_busy_s, "" if row.usage.gpu_busy_s is not None else note)
    if found["GPU"].reserved_s == 0:
        del found["GPU"]
    return found


def _cpu_note(row: Row) -> str:
    return "" if row.usage.processes or row.held_s == 0 else "no usage record arrived (ended before its first sample)"


def cost_of(
    rows: Iterable[Row], bundles: tuple[Mapping[str, float], ...], prices: Mapping[str, float]
) -> dict[str, Any]:
    """What the rows' reservations cost at ``prices`` per resource-hour (memory per GiB-hour), and
    how much of it was idle: CPU and GPU time reserved but not used. A resource whose use is not
    measured (memory, custom resources, a GPU without NVML) counts as busy, and is named."""
    total = idle = 0.0
    unmeasured: set[str] = set()
    for row in rows:
        gang = reserved(bundles, row.world_size)
        hours = row.held_s / 3600.0
        for name, amount in gang.items():
            price = prices.get(name)
            if not price:
                continue
            units = amount / _GIB if name == "memory" else amount
            total += units * hours * price
            used = {"CPU": row.usage.cpu_s if row.usage.processes else None, "GPU": row.usage.gpu_busy_s}.get(name)
            if used is None:
                unmeasured.add(name)
                continue
            idle += max(0.0, units * row.held_s - used) / 3600.0 * price
    return {"cost_estimate": total, "idle_cost": idle, "idle_unmeasured": sorted(unmeasured)}
