"""The run report's timeline: one HTML page that fetches nothing, with a row for every step, attempt,
item and trial (found by ``data-step``/``data-row``), titled bars, gaps and marks, a fixed row height at
200 steps and 100 trials; and the same rows as a PNG. Reports are built from synthetic event records
by ``core/report.py``, as ``rto report`` builds them."""

from __future__ import annotations

import re
import struct
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from raytrain_orch.core import report_rows, timeline
from raytrain_orch.core.report import build
from raytrain_orch.core.timeline import PART_COLOURS, ROW_PX, render_html
from raytrain_orch.tracking import timeline_png
from raytrain_orch.tracking.timeline_png import render_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Run:
    """A synthetic run: its event records (with the fields ``core/report_rows.py`` reads) and its plan."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []
        self.add("run_started", 1000.0)

    def add(self, event: str, ts: float, **fields: Any) -> None:
        self.records.append({"event": event, "ts": ts, "run_id": "run-1", **fields})

    def declare(self, name: str, kind: str = "task", inputs: tuple[str, ...] = (), gpu: bool = False) -> None:
        bundle = {"CPU": 1, "GPU": 1} if gpu else {"CPU": 1}
        self.steps.append({"name": name, "kind": kind, "inputs": list(inputs), "gang": {"bundles": [bundle]}})

    def task(self, unit: str, at: float, end: str = "step_succeeded", error: str | None = None) -> float:
        """A task attempt: admitted after 0.5 s, its code from 1 s to 2.5 s, ended at 3 s."""
        self.add("step_started", at, step=unit, attempt=1)
        self.add("step_admitted", at + 0.5, step=unit, attempt=1)
        sample = {"host": "h", "pid": 7, "since": at + 1.0, "cpu_s": 1.2, "final": True}
        self.add("usage", at + 2.5, sent_ts=at + 2.5, step=unit, attempt=1, **sample)
        self.add(end, at + 3.0, step=unit, attempt=1, **({"error": error} if error else {}))
        return at + 3.0

    def train_restarted(self, step: str, at: float) -> float:
        """A train step whose workers restart once (restored from epoch 0), whose first attempt is
        retried after a failure, and whose second attempt succeeds."""
        self.add("step_started", at, step=step, attempt=1)
        self.add("step_admitted", at + 1.0, step=step, attempt=1)
        self.epoch(step, 1, at + 5.0, 0)
        self.add("workers_restarting", at + 6.0, sent_ts=at + 6.0, step=step, attempt=1, reason="node lost")
        self.add("restored", at + 7.0, sent_ts=at + 7.0, step=step, attempt=1, epoch=0)
        self.epoch(step, 1, at + 11.0, 1)
        self.add("step_retrying", at + 12.0, step=step, attempt=1, error="CUDA out of memory")
        self.add("step_started", at + 14.0, step=step, attempt=2)
        self.add("step_admitted", at + 14.5, step=step, attempt=2)
        self.epoch(step, 2, at + 18.0, 2)
        self.add("step_succeeded", at + 19.0, step=step, attempt=2)
        return at + 19.0

    def epoch(self, step: str, attempt: int, sent: float, number: int, **trial: Any) -> None:
        timing = {"epoch_s": 2.0, "log_s": 0.5, "report_s": 0.5}
        self.add("epoch", sent, sent_ts=sent, step=step, attempt=attempt, epoch=number, **timing, **trial)

    def sweep(self, step: str, at: float, trials: int) -> float:
        self.add("step_started", at, step=step, attempt=1)
        for i in range(trials):
            trial, begin = f"{step}_{i:05d}", at + 1.0 + 0.01 * i
            self.add("trial_started", begin, step=step, attempt=1, trial=trial)
            self.add("step_admitted", begin + 0.5, step=step, attempt=1, trial=trial)
            self.epoch(step, 1, begin + 4.0, 0, trial=trial)
            self.add("trial_finished", begin + 4.5, step=step, attempt=1, trial=trial)
        self.add("step_succeeded", at + 7.0, step=step, attempt=1)
        return at + 7.0

    def mapped(self, step: str, at: float, items: int) -> float:
        self.add("step_started", at, step=step, attempt=1)
        self.add("step_mapped", at + 0.2, step=step, attempt=1, items=items)
        ends = [self.task(f"{step}[{i}]", at + 0.5 + 0.1 * i) for i in range(items)]
        self.add("step_succeeded", max(ends) + 0.5, step=step, attempt=1)
        return max(ends) + 0.5

    def report(self, prices: dict[str, float] | None = None) -> dict[str, Any]:
        end = max(r["ts"] for r in self.records) + 1.0
        records = sorted(
            [*self.records, {"event": "run_finished", "ts": end, "status": "FAILED"}], key=lambda r: r["ts"]
        )
        return build(records, {"steps": self.steps}, prices).to_dict()


class Page(HTMLParser):
    """What a browser would find: every element's tag and attributes, and each ``<title>``'s text with
    the element it belongs to."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.titles: list[tuple[str, dict[str, str | None], str]] = []
        self._open: list[tuple[str, dict[str, str | None]]] = []
        self._title: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag == "title":
            self._title = []
        elif tag not in ("meta", "br", "hr", "img", "input", "link"):  # void elements never close
            self._open.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._title is not None:
            owner = self._open[-1] if self._open else ("", {})
            self.titles.append((owner[0], owner[1], "".join(self._title)))
            self._title = None
        elif self._open and self._open[-1][0] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._title is not None:
            self._title.append(data)

    def rows(self) -> list[dict[str, str | None]]:
        return [attrs for tag, attrs in self.elements if tag == "g" and "data-row" in attrs]

    def titled(self, css: str) -> list[str]:
        """The tooltips of the elements whose class has ``css``."""
        return [text for _, attrs, text in self.titles if css in (attrs.get("class") or "").split()]


@pytest.fixture(scope="module")
def small() -> dict[str, Any]:
    run = Run()
    run.declare("load")
    run.declare("train", "train", ("load",), gpu=True)
    run.declare("search", "sweep", ("train",))
    run.declare("score", "task", ("load",))
    run.declare("warm", "task")
    run.declare("publish", "task", ("search",))
    run.declare("flaky", "task")
    t = run.task("load", 1001.0)
    t = run.train_restarted("train", t + 0.5)
    run.sweep("search", t, trials=3)
    run.mapped("score", 1005.0, items=3)
    run.add("step_cached", 1002.0, step="warm")
    run.task("flaky", 1003.0, end="step_failed", error="boom <b> & 'x'\nTraceback (most recent call last)")
    return run.report(prices={"CPU": 0.05, "GPU": 2.5})


@pytest.fixture(scope="module")
def big() -> dict[str, Any]:
    return _wide(steps=200, trials=100)


def _wide(steps: int, trials: int) -> dict[str, Any]:
    """``steps`` steps in a chain, the middle one a sweep of ``trials`` trials."""
    run, t = Run(), 1001.0
    for i in range(steps):
        name = f"step_{i:03d}_with_a_rather_long_descriptive_name"
        run.declare(name, "sweep" if i == steps // 2 else "task", (run.steps[-1]["name"],) if run.steps else ())
        t = run.sweep(name, t, trials) if i == steps // 2 else run.task(name, t)
    return run.report()


def test_every_step_attempt_item_and_trial_has_a_row(small):
    page = Page(render_html(small))
    rows = page.rows()

    assert [s["name"] for s in small["steps"]] == list(dict.fromkeys(r["data-step"] for r in rows))
    keys = {r["data-row"] for r in rows}
    assert {"train#1", "train#2", "search/search_00002", "score[2]#1", "load#1"} <= keys
    assert {"warm", "publish"} <= keys  # a cached and a pending step: a row each, keyed by their name


def test_the_page_fetches_nothing_and_is_plain_ascii(small):
    html = render_html(small)

    for banned in ("http://", "https://", "src=", "href=", "<link", "<script", "@import", "url("):
        assert banned not in html
    assert html.startswith("<!DOCTYPE html>")
    assert html.isascii()


def test_bars_gaps_and_marks_carry_tooltips(small):
    page = Page(render_html(small))

    gaps = page.titled("gap")
    assert any("train: retry between attempts, 2.0 s" in tip for tip in gaps)
    assert any(tip.startswith("workers restarting: train") and "node lost" in tip for tip in page.titled("m-restart"))
    assert any("restored epoch 0" in tip for tip in page.titled("m-restored"))
    assert any("CUDA out of memory" in tip for tip in page.titled("m-failed"))
    assert any(tip.startswith("cached: warm") for tip in page.titled("m-cached"))
    assert any(tip.startswith("work: train epoch 0, 2.5 s") for tip in page.titled("p-work"))
    drawn = {css for _, attrs in page.elements for css in (attrs.get("class") or "").split()}
    assert {f"p-{part}" for part in ("wait", "startup", "work", "checkpoint", "restart", "teardown")} <= drawn


def test_text_from_the_run_is_escaped(small):
    html = render_html(small)

    assert "boom <b>" not in html
    assert "boom &lt;b&gt; &amp; &#x27;x&#x27;" in html


def test_header_says_what_was_not_measured_and_never_shows_a_zero_for_it(small):
    html = render_html(small)
    header = html[html.index("<header>") : html.index("</header>")]

    assert "Run run-1" in header and "failed" in header
    assert "GPU: not measured" in header and "GPU: 0 %" not in header
    assert "Cost estimate" in header and "Critical path: load" in header and "Advice: train lost" in header


def test_the_step_table_has_each_step_its_parts_and_its_cpu_use(small):
    page = Page(render_html(small))
    headings = [attrs for tag, attrs in page.elements if tag == "th"]
    table = render_html(small).split("<tbody>")[1].split("</tbody>")[0]

    assert len(headings) == 3 + 7 + 1
    assert table.count("<tr>") == len(small["steps"])
    assert "<td>publish</td><td>pending</td><td>-</td>" in table
    assert re.search(r"<td>load</td><td>succeeded</td><td>3\.0 s</td>.*?<td>\d+ %</td></tr>", table)


def test_a_step_with_many_rows_keeps_its_own_row_in_view_and_folds_the_rest(big):
    html = render_html(big)
    sweep = big["steps"][100]["name"]
    folded = re.search(rf'<details class="rows" data-step="{sweep}"><summary>(.*?)</summary>(.*?)</details>', html)

    assert folded is not None and "trial" in folded.group(1)
    assert folded.group(2).count(f'data-step="{sweep}"') == 100  # its trials, in the closed section
    assert html.count(f'data-step="{sweep}"') == 1 + 1 + 100  # and its own row outside it
    assert '<details class="rows" data-step' in html and '<details class="rows" open' not in html


def test_200_steps_and_100_trials_render_fast_with_a_fixed_row_height(big):
    started = time.perf_counter()
    html = render_html(big)
    took = time.perf_counter() - started
    page = Page(html)
    rows = page.rows()
    heights = [
        int(attrs["height"] or 0) for tag, attrs in page.elements if tag == "svg" and attrs.get("class") == "rows"
    ]

    assert took < 2.0
    assert {r["data-step"] for r in rows} == {s["name"] for s in big["steps"]}
    assert len(rows) == 200 + 100
    assert sum(heights) == len(rows) * ROW_PX
    assert "step_002_with_a_rather_long_descriptive_name → ... 194 more ... → step_197" in html.replace("&#8594;", "→")
    label = next(text for tag, attrs, text in page.titles if tag == "text" and text.startswith("step_000"))
    assert label.startswith("step_000_with_a_rather_long_descriptive_name (task)")  # whole in the tooltip


def test_the_page_grows_linearly_with_the_rows():
    def height(steps: int) -> int:
        page = Page(render_html(_wide(steps, trials=4)))
        return sum(int(a["height"] or 0) for tag, a in page.elements if tag == "svg" and a.get("class") == "rows")

    small, large = height(10), height(40)

    assert (small, large) == ((10 + 4) * ROW_PX, (40 + 4) * ROW_PX)


def test_a_report_without_steps_or_start_still_renders():
    html = render_html({"run_id": "empty", "status": "running", "start": None, "end": None, "steps": []})

    assert "Run empty" in html and "GPU: none reserved" in html


def test_the_png_draws_a_small_and_a_big_report(small, big, tmp_path):
    small_png = render_png(small, tmp_path / "small.png")
    big_png = render_png(big, str(tmp_path / "big.png"))

    assert isinstance(big_png, Path)
    for path in (small_png, big_png):
        assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert _png_height(big_png) > 10 * _png_height(small_png) / 2  # 300 rows against 17


def test_the_png_folds_each_steps_rows_into_one_past_its_row_limit(small, tmp_path, monkeypatch):
    full = _png_height(render_png(small, tmp_path / "full.png"))
    monkeypatch.setattr(timeline_png, "FOLD_ABOVE", 5)

    folded = _png_height(render_png(small, tmp_path / "folded.png"))

    assert folded < full


def test_the_png_uses_the_pages_colours_and_every_part_and_mark_has_one():
    marks = {*report_rows._MARKS.values(), "failed", "cached"}  # what a row can carry, and a cached step's

    assert timeline_png.PART_COLOURS is PART_COLOURS is timeline.PART_COLOURS
    assert set(PART_COLOURS) == set(report_rows.PARTS) and len(set(PART_COLOURS.values())) == 7
    assert marks == set(timeline.MARK_COLOURS) == set(timeline.MARK_NAMES) == set(timeline_png._MARKERS)


def _png_height(path: Path) -> int:
    """The image's height in pixels, from its IHDR chunk."""
    return struct.unpack(">I", path.read_bytes()[20:24])[0]
