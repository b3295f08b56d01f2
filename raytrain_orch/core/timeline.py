"""The run report's timeline as one self-contained HTML page, from ``Report.to_dict()`` alone.

Steps, and under each its attempts, mapped items and sweep trials, are rows on one time axis; a row's spans are
bars coloured by part, the gaps between a step's attempts dashed bars, its restarts, hangs, preemptions and
failures small symbols, each with a tooltip. The page fetches nothing (inline CSS and SVG, no script, no URL), so
it opens offline and in MLflow's artifact viewer alike. Rows keep a fixed height, so 200 steps grow the page
rather than thin its bars; a step with many trials or items folds them into a closed ``<details>``.
``tracking/timeline_png.py`` draws the same ``lines`` in the same ``PART_COLOURS``. Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from raytrain_orch.core.report_rows import PARTS
from raytrain_orch.core.report_text import gauge_line, percent
from raytrain_orch.core.text import duration

#: Each part's colour (Okabe-Ito: told apart with the common colour-blindnesses too); the PNG's too.
PART_COLOURS: Mapping[str, str] = MappingProxyType({
    "wait": "#BBBBBB", "startup": "#E69F00", "work": "#0072B2", "checkpoint": "#56B4E9",
    "restart": "#D55E00", "hang": "#CC79A7", "teardown": "#009E73",
})  # fmt: skip
#: Each mark's colour; drawn with a dark outline, so it shows on any bar. A cached step's row is its mark.
MARK_COLOURS: Mapping[str, str] = MappingProxyType({
    "restart": "#FFFFFF", "hang": "#882255", "preempting": "#F0E442", "preempted": "#EE7733",
    "draining": "#44AA99", "restored": "#117733", "failed": "#000000", "cached": "#555555",
})  # fmt: skip
#: Each mark's symbol: an SVG path from the mark's centre (▼ ■ ◆ ◆ ▲ ● ✕ |).
_SHAPES: Mapping[str, str] = MappingProxyType({
    "restart": "m -4 -4 l 8 0 l -4 7 z", "hang": "m -3.5 -3.5 l 7 0 l 0 7 l -7 0 z",
    "preempting": "m 0 -5 l 4 5 l -4 5 l -4 -5 z", "preempted": "m 0 -5 l 4 5 l -4 5 l -4 -5 z",
    "draining": "m -4 4 l 4 -8 l 4 8 z", "restored": "m -3.5 0 a 3.5 3.5 0 1 0 7 0 a 3.5 3.5 0 1 0 -7 0",
    "failed": "m -3.5 -3.5 l 7 7 m 0 -7 l -7 7", "cached": "m -1 -7 l 2 0 l 0 14 l -2 0 z",
})  # fmt: skip
#: What the legend and tooltips call each mark.
MARK_NAMES: Mapping[str, str] = MappingProxyType({
    "restart": "workers restarting", "hang": "hung", "preempting": "preempting", "preempted": "preempted",
    "draining": "node draining", "restored": "restored", "failed": "failed", "cached": "cached",
})  # fmt: skip
ROW_PX = 16  # every row's height: a long run grows the page, never thins its bars
BAR_PX = 10
LABEL_PX = 240  # the label column, inside each SVG so labels and bars cannot drift apart
CHART_PX = 960
_WIDTH = LABEL_PX + CHART_PX + 80  # room for a state note after a bar that ends at the run's end
LABEL_CHARS = 36
FOLD_ROWS = 20  # more rows under a step than this go into a closed <details>
OPEN_TABLE_STEPS = 40  # the step table starts open up to this many steps
_QUIET = frozenset({"succeeded", "finished", ""})  # outcomes that need no note after the bar
_OWN = frozenset({"attempt", "sweep", "mapped"})

Span = tuple[str, float, float, str]  # part, start, end, label
Mark = tuple[str, float, str]  # kind, at, text


@dataclass(frozen=True)
class Line:
    """One row of the picture: a step (its attempts' spans and the gaps between), or one of its rows."""

    step: str
    key: str
    name: str  # in full: the step's name, or the row's label
    label: str  # as shown, under its step
    title: str
    kind: str = "step"
    depth: int = 0
    spans: tuple[Span, ...] = ()
    gaps: tuple[Span, ...] = ()
    marks: tuple[Mark, ...] = ()
    note: str = ""  # the state worth a word after the bar: failed, pending, cached, ...


@dataclass(frozen=True)
class Scale:
    """Run time to pixels: ``origin`` (the run's start) at the label column's edge, ``span`` seconds wide."""

    origin: float
    span: float

    @classmethod
    def of(cls, report: Mapping[str, Any], steps: Sequence[tuple[Line, list[Line]]]) -> Scale:
        """From the run's start (or its first moment, if earlier or none) to its end or last moment."""
        times = [t for head, rows in steps for line in (head, *rows) for t in _times(line)]
        start = report.get("start")
        origin = min([*times, *([float(start)] if start is not None else [])], default=0.0)
        end = max([float(report.get("end") or origin), *times])
        return cls(origin, end - origin if end > origin else 1.0)

    def x(self, at: float) -> float:
        return LABEL_PX + (at - self.origin) / self.span * CHART_PX

    def ticks(self) -> list[tuple[float, float, str]]:
        """At most 10 round ticks, (offset, x, label): seconds, then whole minutes and hours."""
        steps = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400)
        step = float(next((s for s in steps if self.span / s <= 10), self.span / 10))
        offsets = [i * step for i in range(int(self.span / step + 1e-9) + 1)]
        return [(t, self.x(self.origin + t), f"{t:g} s" if step < 60 or not t else duration(t)) for t in offsets]


def _times(line: Line) -> list[float]:
    """Every moment a line shows: its spans' and gaps' ends, its marks."""
    return [t for _, start, end, _ in (*line.spans, *line.gaps) for t in (start, end)] + [m[1] for m in line.marks]


def lines(report: Mapping[str, Any]) -> list[tuple[Line, list[Line]]]:
    """Each step's line and the lines under it, in the report's order: what both pictures draw."""
    return [_step_lines(step) for step in report.get("steps") or []]


def _step_lines(step: Mapping[str, Any]) -> tuple[Line, list[Line]]:
    """A step's line (its lone attempt's, keyed by it, or its attempts' together), and one per row under it."""
    name, rows = str(step["name"]), list(step.get("rows") or [])
    own = [row for row in rows if row["kind"] in _OWN]
    lone = own[0] if len(own) == 1 else None
    wall = f", wall {duration(step.get('wall_s'))}" if step.get("end") is not None else ""
    head = Line(
        step=name,
        key=str(lone["key"]) if lone else name,
        name=name,
        label=name,
        title=f"{name} ({step.get('kind')}): {step.get('state')}{wall}",
        spans=tuple(span for row in own for span in _spans(row.get("spans"))),
        gaps=_spans(step.get("gaps")),
        marks=tuple(mark for row in own for mark in _marks(row)) + _cached(step),
        note="" if step.get("state") in _QUIET else str(step.get("state")),
    )
    nested = 2 if len(own) > 1 else 1
    children = [_child(name, row, 1 if row["kind"] in _OWN else nested) for row in rows if row is not lone]
    return head, children


def _cached(step: Mapping[str, Any]) -> tuple[Mark, ...]:
    """A cached step ran nothing: its row is one thin mark, when its result was found."""
    if step.get("state") != "cached" or step.get("start") is None:
        return ()
    return (("cached", float(step["start"]), "result found in the cache: nothing ran"),)


def _child(step: str, row: Mapping[str, Any], depth: int) -> Line:
    """An attempt, item or trial, labelled without its step's name (it sits under it)."""
    label, kind = str(row["label"]), str(row["kind"])
    rest = label[len(step) :].strip() if label.startswith(step) else label
    outcome = str(row.get("outcome") or "")
    return Line(
        step=step,
        key=str(row["key"]),
        name=label,
        label=rest if rest.startswith(kind) else f"{kind} {rest}".strip(),
        title=f"{label} ({kind}): {outcome}, wall {duration(row.get('wall_s'))}",
        kind=kind,
        depth=depth,
        spans=_spans(row.get("spans")),
        marks=_marks(row),
        note="" if outcome in _QUIET else outcome,
    )


def _spans(spans: Sequence[Sequence[Any]] | None) -> tuple[Span, ...]:
    return tuple((str(s[0]), float(s[1]), float(s[2]), str(s[3])) for s in spans or [])


def _marks(row: Mapping[str, Any]) -> tuple[Mark, ...]:
    return tuple((str(m[0]), float(m[1]), str(m[2])) for m in row.get("marks") or [])


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one HTML document that fetches nothing: header, step table, legend, axis, rows."""
    steps = lines(report)
    scale = Scale.of(report, steps)
    body = [_header(report), _table(report), _legend(), _axis(scale), *_sections(steps, scale)]
    title = escape(f"Run {report.get('run_id') or ''}: timeline")
    head = f'<head><meta charset="utf-8"><title>{title}</title><style>{_css()}</style></head>'
    page = f'<!DOCTYPE html>\n<html lang="en">{head}\n<body>\n' + "\n".join(body) + "\n</body></html>\n"
    return page.encode("ascii", "xmlcharrefreplace").decode("ascii")  # reads right whatever it is saved as


_STYLE = (
    'body{font:13px system-ui,-apple-system,"Segoe UI",sans-serif;margin:16px;color:#222}h1{font-size:18px;margin:0}'
    "header p{margin:3px 0}.advice{background:#fff7e0;padding:4px 8px;border-left:3px solid #E69F00}"
    "table{border-collapse:collapse;font-size:12px}th,td{padding:1px 8px;text-align:right;border-bottom:1px solid #eee}"
    "th:nth-child(-n+2),td:nth-child(-n+2){text-align:left}summary{cursor:pointer;margin:4px 0}"
    "details.rows>summary{padding-left:24px;color:#0072B2}svg{display:block;font-size:11px}"
    ".axis{position:sticky;top:0;background:#fff}.grid{stroke:#e6e6e6}.stripe{fill:#f6f6f6}.d0 .label{font-weight:600}"
    ".gap{fill-opacity:.35;stroke:#555;stroke-dasharray:3 2}.mark{stroke:#222;stroke-width:.8}"
    ".m-failed{stroke:#000;stroke-width:2}.note{fill:#666;font-style:italic}"
)


def _css() -> str:
    parts = "".join(f".p-{part}{{fill:{colour}}}" for part, colour in PART_COLOURS.items())
    return _STYLE + parts + "".join(f".m-{kind}{{fill:{colour}}}" for kind, colour in MARK_COLOURS.items())


def _header(report: Mapping[str, Any]) -> str:
    """The run's line (status, wall, start, CPU and GPU use), its cost, critical path and advice."""
    use = report.get("utilisation") or {}
    facts = [f"<b>{escape(str(report.get('status') or ''))}</b>", f"wall {duration(report.get('wall_s'))}"]
    if report.get("start") is not None:
        started = datetime.fromtimestamp(float(report["start"]), tz=timezone.utc)
        facts.append(f"started {started:%Y-%m-%d %H:%M:%S} UTC")
    facts += [escape(gauge_line(name, use.get(name))) for name in ("CPU", "GPU")]
    out = [f"<h1>Run {escape(str(report.get('run_id') or ''))}</h1>", f"<p>{' · '.join(facts)}</p>"]
    advice = str((report.get("advice") or {}).get("text") or "")
    out += [_cost(report.get("cost")), _path(report.get("critical_path") or {})]
    out.append(f'<p class="advice">Advice: {escape(advice)}</p>' if advice else "")
    return "<header>" + "".join(out) + "</header>"


def _cost(cost: Mapping[str, Any] | None) -> str:
    if not cost:
        return ""
    prices = ", ".join(f"{name} {price:g}" for name, price in (cost.get("prices") or {}).items())
    unmeasured = ", ".join(cost.get("idle_unmeasured") or [])
    note = f"; {unmeasured} not measured, counted as busy" if unmeasured else ""
    text = f"Cost estimate {cost['cost_estimate']:.4f}, of it idle reservations {cost['idle_cost']:.4f}"
    return f"<p>{escape(f'{text} (per resource-hour: {prices}{note})')}</p>"


def _path(path: Mapping[str, Any]) -> str:
    """The critical path and what besides work it spent; a long one shows its ends (whole in its tooltip)."""
    names = [str(name) for name in path.get("steps") or []]
    shown = names if len(names) <= 7 else [*names[:3], f"... {len(names) - 6} more ...", *names[-3:]]
    lost = ", ".join(f"{part} {duration(s)}" for part, s in (path.get("parts") or {}).items() if s and part != "work")
    text = f"Critical path: {' → '.join(shown)} ({duration(path.get('wall_s'))}{'; ' + lost if lost else ''})"
    return f'<p title="{escape(" → ".join(names))}">{escape(text)}</p>' if names else ""


def _table(report: Mapping[str, Any]) -> str:
    """Each step's state, wall time, parts and CPU use; closed by default on a long run."""
    steps = report.get("steps") or []
    head = "".join(f"<th>{escape(h)}</th>" for h in ("step", "state", "wall", *PARTS, "CPU"))
    body = "".join(_table_row(step) for step in steps)
    opened = " open" if len(steps) <= OPEN_TABLE_STEPS else ""
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<details class="steps"{opened}><summary>Steps ({len(steps)})</summary>{table}</details>'


def _table_row(step: Mapping[str, Any]) -> str:
    parts = step.get("parts") or {}
    wall = duration(step.get("wall_s")) if step.get("end") is not None else "-"
    cells = [step["name"], step.get("state") or "", wall, *(f"{parts[p]:.1f}" if parts.get(p) else "-" for p in PARTS)]
    cpu = (step.get("utilisation") or {}).get("CPU") or {}
    use = percent(cpu.get("efficiency")) if cpu.get("measured") or not cpu else "not measured"
    last = f'<td title="{escape(str(cpu["note"]))}">{use}</td>' if cpu.get("note") else f"<td>{use}</td>"
    return "<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in cells) + last + "</tr>"


def _legend() -> str:
    """The parts' colours (and a gap's dashes), then the marks' symbols."""
    parts = [f'<rect class="p-{p}" width="12" height="10"/><text x="16" y="9">{p}</text>' for p in PARTS]
    parts.append('<rect class="gap p-wait" width="12" height="10"/><text x="16" y="9">gap between attempts</text>')
    marks = [
        f'<path class="mark m-{k}" d="M 6 5 {d}"/><text x="16" y="9">{MARK_NAMES[k]}</text>' for k, d in _SHAPES.items()
    ]
    items = [(i, 4, item) for i, item in enumerate(parts)] + [(i, 22, item) for i, item in enumerate(marks)]
    body = "".join(f'<g transform="translate({8 + 130 * i},{y})">{item}</g>' for i, y, item in items)
    return f'<svg class="legend" width="{_WIDTH}" height="38">{body}</svg>'


def _axis(scale: Scale) -> str:
    """Tick labels over the rows; it stays in view while the rows scroll under it."""
    ticks = "".join(
        f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="14" y2="20"/>'
        f'<text x="{x:.1f}" y="11" text-anchor="middle">{escape(label)}</text>'
        for _, x, label in scale.ticks()
    )
    return f'<svg class="axis" width="{_WIDTH}" height="20"><text x="4" y="11">since the start</text>{ticks}</svg>'


def _sections(steps: Sequence[tuple[Line, list[Line]]], scale: Scale) -> list[str]:
    """The rows in SVGs: a step with more than ``FOLD_ROWS`` rows under it ends the current one,
    and its rows go in a closed ``<details>`` of their own."""
    out: list[str] = []
    shown: list[Line] = []
    for head, rows in steps:
        if len(rows) <= FOLD_ROWS:
            shown += [head, *rows]
            continue
        out.append(_svg([*shown, head], scale))
        shown = []
        count = ", ".join(f"{kind} × {n}" for kind, n in Counter(r.kind for r in rows).items())
        summary = f"<summary>{escape(head.step)}: {escape(count)}</summary>"
        out.append(f'<details class="rows" data-step="{escape(head.step)}">{summary}{_svg(rows, scale)}</details>')
    return out + ([_svg(shown, scale)] if shown else [])


def _svg(rows: Sequence[Line], scale: Scale) -> str:
    height = len(rows) * ROW_PX
    grid = "".join(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height}"/>' for _, x, _ in scale.ticks())
    body = "".join(_row(line, i, scale) for i, line in enumerate(rows))
    return f'<svg class="rows" width="{_WIDTH}" height="{height}" viewBox="0 0 {_WIDTH} {height}">{grid}{body}</svg>'


def _row(line: Line, index: int, scale: Scale) -> str:
    """One row's ``<g>``: its label (in full in its tooltip), gaps, bars, marks and state note."""
    top, mid = index * ROW_PX, index * ROW_PX + ROW_PX / 2
    room = LABEL_CHARS - 3 * line.depth  # a longer label is cut; its tooltip has it whole
    label = line.label if len(line.label) <= room else line.label[: room - 1] + "…"
    out = [f'<g class="row d{line.depth}" data-step="{escape(line.step)}" data-row="{escape(line.key)}">']
    if index % 2:
        out.append(f'<rect class="stripe" x="0" y="{top}" width="{_WIDTH}" height="{ROW_PX}"/>')
    text = f'<text class="label" x="{4 + 12 * line.depth}" y="{mid + 4:.0f}">{escape(label)}'
    out.append(f"{text}<title>{escape(line.title)}</title></text>")
    out += [_bar(span, line.name, mid, scale, gap=True) for span in line.gaps]
    out += [_bar(span, line.name, mid, scale) for span in line.spans]
    out += [_mark(mark, line.name, mid, scale) for mark in line.marks]
    if line.note:  # a state worth a word (failed, pending, cached, ...) after the bars
        x = scale.x(max(_times(line))) + 6 if _times(line) else LABEL_PX + 4
        out.append(f'<text class="note" x="{x:.1f}" y="{mid + 4:.0f}">{escape(line.note)}</text>')
    return "".join(out) + "</g>"


def _bar(span: Span, name: str, mid: float, scale: Scale, gap: bool = False) -> str:
    part, start, end, label = span
    if end <= start:
        return ""
    x = scale.x(start)
    where = f"{start - scale.origin:.1f}–{end - scale.origin:.1f} s"
    what = f"{name}: {label or 'gap'} between attempts" if gap else f"{name}{f' {label}' if label else ''}"
    tip = escape(f"{part}: {what}, {duration(end - start)} ({where})")
    box = f'x="{x:.1f}" y="{mid - BAR_PX / 2:.1f}" width="{max(1.0, scale.x(end) - x):.1f}" height="{BAR_PX}"'
    return f'<rect class="p-{escape(part)}{" gap" if gap else ""}" {box}><title>{tip}</title></rect>'


def _mark(mark: Mark, name: str, mid: float, scale: Scale) -> str:
    kind, at, text = mark
    where = f'd="M {scale.x(at):.1f} {mid:.1f} {_SHAPES.get(kind, _SHAPES["hang"])}"'
    tip = escape(f"{MARK_NAMES.get(kind, kind)}: {name} at {at - scale.origin:.1f} s: {text}")
    return f'<path class="mark m-{escape(kind)}" {where}><title>{tip}</title></path>'
