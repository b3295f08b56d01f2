"""Learning curves as a PNG, drawn from a run's epoch events (matplotlib, headless)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

Series = dict[str, dict[str, dict[int, float]]]  # label (the step, or a trial) → metric → epoch → value


def epoch_series(events: Iterable[Mapping[str, Any]], step: str, by_trial: bool = False) -> Series:
    """Each metric's value per epoch of ``step``, from its ``epoch`` events; a later value for
    the same epoch (recomputed after a restart from a checkpoint) replaces the earlier one."""
    series: Series = {}
    for e in events:
        if (
            e.get("event") != "epoch"
            or e.get("step") != step
            or e.get("epoch") is None
            or bool(e.get("trial")) != by_trial
        ):
            continue
        label = e["trial"].rsplit("_", 1)[-1] if by_trial else step
        for name, value in (e.get("metrics") or {}).items():
            if name != "epoch":
                series.setdefault(label, {}).setdefault(name, {})[int(e["epoch"])] = float(value)
    return series


def learning_curves(series: Series, path: Path, title: str) -> Path | None:
    """One panel per metric, one line per label, epochs on x (1-based); None without data."""
    metrics = sorted({name for by_metric in series.values() for name in by_metric})
    if not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(len(metrics), 3)
    rows = math.ceil(len(metrics) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.4 * rows), squeeze=False)
    for panel, name in zip(axes.flat, metrics, strict=False):  # the grid may have spare panels
        for label, by_metric in sorted(series.items()):
            points = sorted(by_metric.get(name, {}).items())
            if points:
                panel.plot(
                    [epoch + 1 for epoch, _ in points],
                    [value for _, value in points],
                    marker="o",
                    markersize=3,
                    label=label,
                )
        panel.set_title(name)
        panel.set_xlabel("epoch")
        panel.grid(alpha=0.3)
        if len(series) > 1:
            panel.legend(fontsize=7, title="trial" if len(series) > 1 else None)
    for panel in list(axes.flat)[len(metrics) :]:
        panel.set_visible(False)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
