"""The MLflow UI as a person sees it: `rto ui` after a digits run, opened in a real headless Chromium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make browser`` or ``.ci/run`` installs them)
and the ``selenium`` package from the dev extra; nothing is downloaded at test time. Screenshots of
the pages land in ``$RTO_TEST_ARTIFACTS`` (default ``test-artifacts/``), failing or not.

The selectors lean on what MLflow 3.17's UI renders: run names are links to
``#/experiments/ID/runs/RUN_ID``; in the runs table the parent's link shares its ``role="gridcell"``
with the one button that expands its child runs; the run page has a ``data-testid="runs-header"``
title and a metrics table of ``role="row"`` / ``role="cell"``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, isolated

pytestmark = pytest.mark.e2e

RTO = str(Path(sys.executable).parent / "rto")
INSTALL_BROWSER = "apt-get install -y chromium chromium-driver  (as root; or `make browser`)"
INSTALL_SELENIUM = ".venv/bin/pip install -e '.[dev]'  (or `make install`)"
ARTIFACTS = Path(os.environ.get("RTO_TEST_ARTIFACTS") or REPO / "test-artifacts")
STEPS = ("prepare", "train", "evaluate", "register")
RENDER_TIMEOUT_S = 60  # a React app on 2 busy CPUs: its first render can take a while
BROWSER_FLAGS = (  # headless Chromium that never reaches outside 127.0.0.1
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
)


def _missing(what: str, install: str):
    """No browser on CI is a broken setup; on a developer's machine, a skip that says what to install."""
    message = f"{what} not found; install it with: {install}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser_paths() -> tuple[str, str]:
    """Checked first, so a machine without a browser skips before the minute-long pipeline run."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        _missing("the selenium package", INSTALL_SELENIUM)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        _missing("chromium" if not chromium else "chromedriver", INSTALL_BROWSER)
    return chromium, driver


@dataclass(frozen=True)
class Served:
    state: dict  # the finished run, as `rto status --json` prints it
    link: str  # the deep link `rto ui` printed
    console: str  # what `rto run` printed (no terminal: the plain lines, as in CI)
    directory: Path  # the run's storage and its sqlite MLflow store


@pytest.fixture(scope="module")
def served(browser_paths, tmp_path_factory) -> Iterator[Served]:
    """A finished 2-epoch digits run in its own storage and sqlite store, and `rto ui` serving it.

    `rto ui` starts as soon as the run has created its MLflow experiment (the deep link needs its
    id), so that the server's start overlaps the training instead of following it.
    """
    directory = tmp_path_factory.mktemp("ui-browser")
    overrides = [arg for s in (*isolated(directory), "train.params.epochs=2") for arg in ("--set", s)]
    pipeline = _start([RTO, "run", "configs/digits.yaml", *overrides], directory / "rto-run.log")
    server = None
    try:
        _wait_for_experiment(pipeline, directory)
        server = _start(
            [
                RTO,
                "ui",
                "configs/digits.yaml",
                "--tracking-uri",
                f"sqlite:///{directory / 'mlflow.db'}",
                "--port",
                str(free_port()),
            ],
            directory / "rto-ui.log",
        )
        assert pipeline.wait(timeout=300) == 0, _tail(directory / "rto-run.log")
        status = subprocess.run(
            [RTO, "status", "--json", "--storage", str(directory / "rto-runs")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        state = json.loads(status.stdout)
        assert state["status"] == "SUCCEEDED"
        link = _wait_for_link(server, directory / "rto-ui.log")
        yield Served(state, link, (directory / "rto-run.log").read_text(), directory)
    finally:
        for process in (server, pipeline):
            if process is not None:
                _stop_group(process)


def _start(command: list[str], log: Path) -> subprocess.Popen:
    """In its own process group, output to a file (a pipe nobody drains would block a server)."""
    with log.open("w") as out:
        return subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def _wait_for_experiment(pipeline: subprocess.Popen, directory: Path, timeout_s: float = 180) -> None:
    from raytrain_orch.core.errors import OrchError
    from raytrain_orch.store.state import RunStore
    from raytrain_orch.store.storage import Storage

    store = RunStore(Storage(str(directory / "rto-runs")))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pipeline.poll() is None:
        try:
            if any(state.mlflow.get("experiment_id") for state in store.list()):
                return
        except OrchError:  # no run yet, or its record caught mid-write
            pass
        time.sleep(0.5)
    pytest.fail(f"the run recorded no MLflow experiment (exit {pipeline.poll()}):\n{_tail(directory / 'rto-run.log')}")


def _wait_for_link(process: subprocess.Popen, log: Path, timeout_s: float = 150) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(r"^MLflow UI: (\S+)", log.read_text(), re.MULTILINE)
        if found:
            return found.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.5)
    pytest.fail(f"rto ui printed no link (exit {process.poll()}):\n{_tail(log)}")


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM rto's group (rto stops the server's own group); then SIGKILL any group still left."""
    import psutil

    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    groups = {process.pid} | ({_pgid(p.pid) for p in descendants} - {None})
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)  # already gone when rto did its job
        except (ProcessLookupError, PermissionError):
            pass
    process.wait(timeout=30)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@pytest.fixture(scope="module")
def browser(browser_paths):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = browser_paths
    options = webdriver.ChromeOptions()
    options.binary_location = chromium  # with both paths given, Selenium Manager downloads nothing
    for flag in (*BROWSER_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='rto-chromium-')}"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


def _screenshot(browser, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    browser.save_screenshot(str(path))
    print(f"\nscreenshot: {path}")


def _wait(browser, condition, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, RENDER_TIMEOUT_S, poll_frequency=0.25).until(condition)
    except TimeoutException:
        pytest.fail(f"the MLflow UI showed no {what} within {RENDER_TIMEOUT_S} s at {browser.current_url}")


def _run_link(browser, mlflow_run_id: str):
    """The visible link to an MLflow run, or None while the UI has not rendered it."""
    from selenium.webdriver.common.by import By

    links = browser.find_elements(By.CSS_SELECTOR, f'a[href$="/runs/{mlflow_run_id}"]')
    return next((link for link in links if link.is_displayed()), None)


def _close_assistant_panel(browser) -> None:
    """The assistant side panel covers a third of the runs table; a person would close it."""
    from selenium.webdriver.common.by import By

    for button in browser.find_elements(By.CSS_SELECTOR, '[data-component-id="mlflow.assistant.chat_panel.close"]'):
        if button.is_displayed():
            button.click()


def test_runs_page_lists_the_pipeline_run_with_its_steps_nested_under_it(browser, served):
    from selenium.webdriver.common.by import By

    run = served.state
    child_ids = {step: run["steps"][step]["mlflow_run_id"] for step in STEPS}
    browser.get(served.link)
    try:
        parent = _wait(browser, lambda b: _run_link(b, run["mlflow"]["run_id"]), f"row for {run['run_id']}")
        assert parent.text == run["run_id"]  # the pipeline run, named after the run id
        _close_assistant_panel(browser)
        if not any(_run_link(browser, i) for i in child_ids.values()):  # collapsed: open the parent row
            parent.find_element(By.XPATH, "./ancestor::div[@role='gridcell']//button").click()
        children = {
            step: _wait(browser, lambda b, i=mlflow_id: _run_link(b, i), f"child row for step {step}")
            for step, mlflow_id in child_ids.items()
        }
        parent = _run_link(browser, run["mlflow"]["run_id"])  # the grid may re-render on expanding
        for step, link in children.items():
            assert link.text == step
            assert link.location["y"] > parent.location["y"], f"{step} is not listed below the pipeline run"
            assert link.location["x"] > parent.location["x"], f"{step} is not indented under the pipeline run"
    finally:
        _screenshot(browser, "ui-runs.png")


def test_run_page_shows_the_test_accuracy_and_the_steps_of_the_pipeline(browser, served):
    from selenium.webdriver.common.by import By

    run = served.state
    expected = run["steps"]["evaluate"]["metrics"]["test_accuracy"]
    browser.get(f"{served.link}/{run['mlflow']['run_id']}")  # the pipeline run's own page
    try:
        row = _wait(browser, lambda b: _metric_row(b, "test_accuracy"), "test_accuracy in the run's metrics")
        assert browser.find_element(By.CSS_SELECTOR, '[data-testid="runs-header"]').text == run["run_id"]
        shown = row.find_elements(By.XPATH, "./div[@role='cell']")[-1].text.strip()
        decimals = len(shown.partition(".")[2])  # the UI may round: compare at the precision it shows
        assert shown == f"{expected:.{decimals}f}", f"test_accuracy shown as {shown!r}, the run has {expected}"
        for step in STEPS:  # "About this run": its child runs, one link per step
            link = _wait(browser, lambda b, i=run["steps"][step]["mlflow_run_id"]: _run_link(b, i), f"child run {step}")
            assert link.text == step
    finally:
        _screenshot(browser, "ui-run.png")


def test_the_runs_timeline_logged_to_mlflow_opens_with_every_step_and_fetches_nothing(browser, served, tmp_path):
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By

    run = served.state
    client = MlflowClient(tracking_uri=f"sqlite:///{served.directory / 'mlflow.db'}")
    page = Path(client.download_artifacts(run["mlflow"]["run_id"], "report/timeline.html", str(tmp_path)))
    browser.get(page.as_uri())
    try:
        rows = _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "g[data-step]"), "timeline rows")
        shown = {row.get_attribute("data-step") for row in rows}
        assert shown >= set(STEPS), f"steps missing from the timeline: {set(STEPS) - shown}"
        bars = browser.find_elements(By.CSS_SELECTOR, 'g[data-step="train"] rect')
        assert any(bar.size["width"] > 0 for bar in bars)  # drawn, not only declared
        fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert fetched == [], f"the timeline fetched {fetched}"
    finally:
        _screenshot(browser, "ui-timeline.png")


def _metric_row(browser, name: str):
    """The row of the run page's metrics table whose first cell is ``name``, or None."""
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.XPATH, f"//div[@role='row'][div[@role='cell'][normalize-space()='{name}']]")
    return rows[0] if rows else None


def test_runs_table_shows_where_the_model_came_from_datasets_source_and_models(browser, served):
    """The runs table's Dataset, Source and Models columns: the tables each step run read or wrote,
    the pipeline's file, and the registered model on the run that logged it. (The train run's link
    to that model is in its run outputs, checked through the API: MLflow 3.17's table lists a
    logged model under the run that logged it.)"""
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By

    run = served.state
    ids = {step: run["steps"][step]["mlflow_run_id"] for step in STEPS}
    browser.get(served.link)
    try:
        parent = _wait(browser, lambda b: _run_link(b, run["mlflow"]["run_id"]), f"row for {run['run_id']}")
        _close_assistant_panel(browser)
        if not _run_link(browser, ids["train"]):
            parent.find_element(By.XPATH, "./ancestor::div[@role='gridcell']//button").click()

        def cells(step: str) -> dict[str, str]:
            row = _run_link(browser, ids[step]).find_element(By.XPATH, "./ancestor::div[@role='row']")
            index = row.get_attribute("row-index")
            return {
                str(cell.get_attribute("col-id")).removeprefix("attributes.`").removesuffix("`"): cell.text
                for part in browser.find_elements(By.CSS_SELECTOR, f"div[role='row'][row-index='{index}']")
                for cell in part.find_elements(By.CSS_SELECTOR, "div[role='gridcell']")
            }

        registered = _wait(
            browser, lambda b: "digits" in cells("register").get("Models", ""), "the register run's model"
        )
        assert registered
        for step in STEPS:
            shown = cells(step)
            assert shown["Source"] == "digits.py", (step, shown)
            assert shown["Dataset"].startswith("prepare."), (step, shown)  # the tables it read (or prepare wrote)
        assert "v1" in cells("register")["Models"]
    finally:
        _screenshot(browser, "ui-lineage.png")

    client = MlflowClient(run["mlflow"]["tracking_uri"])
    (model,) = client.get_run(ids["register"]).outputs.model_outputs
    assert [m.model_id for m in client.get_run(ids["train"]).outputs.model_outputs] == [model.model_id]
    inputs = {d.dataset.name: d for d in client.get_run(ids["train"]).inputs.dataset_inputs}
    assert {"prepare.train", "prepare.val", "prepare.test"} <= set(inputs)
    assert inputs["prepare.train"].dataset.source.endswith('train.parquet"}')
    assert {t.value for t in inputs["prepare.train"].tags} == {"input"}


#: Every line `rto run` may print on a console without a terminal (CI, a pipe): the project's own.
OWN_LINES = [
    r"\d\d:\d\d:\d\d  ray: (started|reusing|restarted) the local runtime at \S+(;| ).*",
    r"\d\d:\d\d:\d\d  ray: a throwaway local Ray for this run.*",
    r"\d\d:\d\d:\d\d  run \S+ (started|SUCCEEDED in [\d.]+ s)",
    r"\d\d:\d\d:\d\d  (prepare|train|evaluate|register) +running( \(attempt \d+\))?  gang .+",
    r"\d\d:\d\d:\d\d  train +epoch \d+/\d+  \S+=.+",
    r"\d\d:\d\d:\d\d  (prepare|train|evaluate|register) +done in [\d.]+ s(  \S+=.+)?",
    r"run \S+ SUCCEEDED  test_accuracy=[\d.]+",
    r"  (status|mlflow): +rto \S+.*",
]


def test_the_run_printed_only_the_projects_own_lines(served):
    """The digits run as CI runs it (no terminal): nothing from Ray, Ray Train or MLflow reaches the
    console — their output is in the steps' logs — and every line has one of the project's shapes."""
    lines = served.console.splitlines()
    foreign = [line for line in lines if not any(re.fullmatch(shape, line) for shape in OWN_LINES)]
    assert not foreign, "lines that are not the project's own:\n" + "\n".join(foreign)
    # The runtime's line, the run's start, each step's start and end, 2 epochs, the run's end and a summary of 3.
    assert len(lines) == 1 + 1 + 4 * 2 + 2 + 1 + 3, "\n".join(lines)
