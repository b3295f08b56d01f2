"""The run report's timeline as a PNG: the HTML page's rows, colours and marks (``core/timeline.py``)
for wherever an image shows and HTML does not (MLflow's artifact list, a chat, a pull request).

Drawn on a bare ``Figure`` with its own Agg canvas, never through pyplot: pyplot keeps a
process-wide backend and figure registry, and this runs on the tracking outbox's thread beside
whatever else the process draws. Rows keep a fixed height, so the figure grows with the run; past
``FOLD_ABOVE`` rows each step's attempts, trials and items fold into one row (their spans drawn
together), and the figure stops at ``MAX_INCHES`` (Agg draws at most 2**16 px a side), thinning
its rows rather than failing.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from raytrain_orch.core.report_rows import PARTS
from raytrain_orch.core.text import duration
from raytrain_orch.core.timeline import MARK_COLOURS, MARK_NAMES, PART_COLOURS, Line, Scale, lines

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
ROW_INCHES = 0.22
MIN_INCHES = 3.0
MAX_INCHES = 600.0  # 60,000 px at DPI, under Agg's 65,536
WIDTH_INCHES = 14.0
LEFT_INCHES, RIGHT_INCHES, TOP_INCHES, BOTTOM_INCHES = 2.8, 0.6, 1.2, 0.6
FOLD_ABOVE = 400  # more rows than this: each step's rows fold into one
LABEL_CHARS = 40
#: matplotlib's marker for each mark the HTML draws (same colours: ``MARK_COLOURS``).
_MARKERS: Mapping[str, str] = MappingProxyType({
    "restart": "v", "hang": "s", "preempting": "D", "preempted": "D",
    "draining": "^", "restored": "o", "failed": "X", "cached": "|",
})  # fmt: skip
_LINE_MARKERS = frozenset({"|"})  # drawn as a stroke: no outline to give them


def render_png(report: Mapping[str, Any], path: str | Path) -> Path:
    """Draw the timeline of ``report`` (``Report.to_dict()``) into ``path``, a PNG; return the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    steps = lines(report)
    rows = _rows(steps)
    scale = Scale.of(report, steps)
    height = min(MAX_INCHES, max(MIN_INCHES, ROW_INCHES * len(rows) + TOP_INCHES + BOTTOM_INCHES))
    figure = Figure(figsize=(WIDTH_INCHES, height), dpi=DPI)
    FigureCanvasAgg(figure)
    left, bottom = LEFT_INCHES / WIDTH_INCHES, BOTTOM_INCHES / height
    axes = figure.add_axes((left, bottom, 1 - left - RIGHT_INCHES / WIDTH_INCHES, 1 - bottom - TOP_INCHES / height))
    _bars(axes, rows, scale.origin)
    _marks(axes, rows, scale.origin)
    _notes(axes, rows, scale.origin)
    _frame(figure, axes, rows, scale)
    _heading(figure, report, height)
    figure.savefig(path, dpi=DPI, format="png")
    return path


def _rows(steps: Sequence[tuple[Line, list[Line]]]) -> list[Line]:
    """Every line, steps first; past ``FOLD_ABOVE``, each step's lines under it folded into one."""
    every = [line for head, under in steps for line in (head, *under)]
    if len(every) <= FOLD_ABOVE:
        return every
    return [line for head, under in steps for line in (head, *_fold(head, under))]


def _fold(head: Line, under: Sequence[Line]) -> list[Line]:
    """One line holding all of ``under``'s spans and marks: where they ran, not which ran where."""
    if not under:
        return []
    kinds = ", ".join(f"{kind} × {n}" for kind, n in Counter(line.kind for line in under).items())
    return [
        Line(
            step=head.step,
            key=f"{head.step}/*",
            name=f"{head.step}: {kinds}",
            label=kinds,
            title=kinds,
            kind="folded",
            depth=1,
            spans=tuple(span for line in under for span in line.spans),
            marks=tuple(mark for line in under for mark in line.marks),
        )
    ]


def _bars(axes: Axes, rows: Sequence[Line], origin: float) -> None:
    """Every row's spans, one collection of bars per part (what ``broken_barh`` makes, but one for
    all rows: a call per row and part took seconds at 300 rows), in ``PARTS`` order so a folded row
    shows its restarts and hangs over its work; then the gaps between attempts, dashed."""
    from matplotlib.collections import PolyCollection

    spans: dict[str, list[list[tuple[float, float]]]] = {}
    gaps: dict[str, list[list[tuple[float, float]]]] = {}
    for index, line in enumerate(rows):
        for found, items in ((spans, line.spans), (gaps, line.gaps)):
            for part, start, end, _ in items:
                if end > start:
                    found.setdefault(part, []).append(_box(start - origin, end - origin, index))
    for part in sorted(spans, key=lambda p: PARTS.index(p) if p in PARTS else len(PARTS)):
        bars = PolyCollection(spans[part], facecolors=PART_COLOURS.get(part, "#999999"), linewidths=0)
        axes.add_collection(bars, autolim=False)
    for part, boxes in gaps.items():
        colour = PART_COLOURS.get(part, "#999999")
        dashed = PolyCollection(boxes, facecolors=colour, alpha=0.35, edgecolors="#555555", linestyles="--")
        axes.add_collection(dashed, autolim=False)


def _box(start: float, end: float, index: int) -> list[tuple[float, float]]:
    return [(start, index - 0.32), (end, index - 0.32), (end, index + 0.32), (start, index + 0.32)]


def _notes(axes: Axes, rows: Sequence[Line], origin: float) -> None:
    """A state worth a word (failed, pending, cached, ...) after a row's last bar or mark."""
    for index, line in enumerate(rows):
        if line.note:
            ends = [end for _, _, end, _ in (*line.spans, *line.gaps)] + [at for _, at, _ in line.marks]
            at = max(ends) - origin if ends else 0.0
            axes.text(at, index, f"  {line.note}", fontsize=6, fontstyle="italic", color="#666666", va="center")


def _marks(axes: Axes, rows: Sequence[Line], origin: float) -> None:
    """Every row's marks, one scatter per kind (a few calls, however many rows)."""
    found: dict[str, list[tuple[float, int]]] = {}
    for index, line in enumerate(rows):
        for kind, at, _ in line.marks:
            found.setdefault(kind, []).append((at - origin, index))
    for kind, points in found.items():
        marker = _MARKERS.get(kind, "s")
        stroke = marker in _LINE_MARKERS
        axes.scatter(
            [x for x, _ in points],
            [y for _, y in points],
            s=22,
            marker=marker,
            color=MARK_COLOURS.get(kind, "#000000"),
            edgecolors=None if stroke else "#222222",
            linewidths=None if stroke else 0.6,
            zorder=3,
        )


def _frame(figure: Figure, axes: Axes, rows: Sequence[Line], scale: Scale) -> None:
    """Row labels, steps in bold and their rows indented under them; seconds since the run's start
    on x, labelled above the rows too, where a tall figure's reader starts."""
    from matplotlib.transforms import ScaledTranslation

    # Plain texts in the left margin, not y tick labels: 300 ticks cost a second to make and draw.
    margin = axes.get_yaxis_transform() + ScaledTranslation(0.1 - LEFT_INCHES, 0, figure.dpi_scale_trans)
    for index, line in enumerate(rows):
        label = "   " * line.depth + _clip(line.label, LABEL_CHARS - 3 * line.depth)
        weight = "bold" if line.depth == 0 else "normal"
        axes.text(0, index, label, transform=margin, fontsize=7, fontweight=weight, va="center", clip_on=False)
    axes.set_yticks([])
    axes.set_ylim(len(rows) - 0.5, -0.5)
    ticks = scale.ticks()
    axes.set_xlim(0, scale.span)
    axes.set_xticks([offset for offset, _, _ in ticks])
    axes.set_xticklabels([label for _, _, label in ticks], fontsize=8)
    axes.tick_params(axis="x", top=True, labeltop=True)
    axes.grid(axis="x", color="#e6e6e6")
    axes.set_axisbelow(True)
    axes.set_xlabel("since the run's start", fontsize=8)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _heading(figure: Figure, report: Mapping[str, Any], height: float) -> None:
    """The run's line and the legend of parts and marks, above the rows."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [Patch(facecolor=PART_COLOURS[part], label=part) for part in PARTS]
    for kind, marker in _MARKERS.items():
        edge = MARK_COLOURS[kind] if marker in _LINE_MARKERS else "#222222"
        face = MARK_COLOURS[kind]
        handles.append(
            Line2D(
                [],
                [],
                label=MARK_NAMES.get(kind, kind),
                marker=marker,
                linestyle="",
                markerfacecolor=face,
                markeredgecolor=edge,
            )
        )
    left = LEFT_INCHES / WIDTH_INCHES
    title = f"Run {report.get('run_id') or ''} · {report.get('status') or ''} · wall {duration(report.get('wall_s'))}"
    figure.text(left, 1 - 0.1 / height, title, fontsize=10, fontweight="bold", va="top")
    anchor = (left, 1 - 0.35 / height)
    figure.legend(handles=handles, loc="upper left", bbox_to_anchor=anchor, ncol=8, fontsize=7, frameon=False)
