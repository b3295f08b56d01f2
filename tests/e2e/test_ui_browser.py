"""The MLflow UI as a person sees it: `rto ui` after a digits run, opened in a real headless Chromium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make browser`` or ``.ci/run`` installs them)
and the ``selenium`` package from the dev extra; nothing is downloaded at test time. Screenshots of
the pages land in ``$RTO_TEST_ARTIFACTS`` (default ``test-artifacts/``), failing or not.

The selectors lean on what MLflow 3.17's UI renders: runs-table cells with ``role="gridcell"`` whose
run-name link points at ``#/experiments/ID/runs/RUN_ID`` next to a button that expands child runs,
and a metrics table of ``role="row"`` / ``role="cell"`` on the run page.
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
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, isolated

pytestmark = pytest.mark.e2e

RTO = str(Path(sys.executable).parent / "rto")
INSTALL = "apt-get install -y chromium chromium-driver  (or `make browser`; selenium: pip install -e '.[dev]')"
ARTIFACTS = Path(os.environ.get("RTO_TEST_ARTIFACTS") or REPO / "test-artifacts")
STEPS = ("prepare", "train", "evaluate", "register")
RENDER_TIMEOUT_S = 60  # a React app on 2 busy CPUs: its first render can take a while
BROWSER_FLAGS = (  # headless Chromium that never reaches outside 127.0.0.1
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,900",
)


def _missing(what: str):
    """No browser on CI is a broken setup; on a developer's machine, a skip that says what to install."""
    message = f"{what} not found; install it with: {INSTALL}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser_paths() -> tuple[str, str]:
    """Checked first, so a machine without a browser skips before the minute-long pipeline run."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        _missing("the selenium package")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        _missing("chromium" if not chromium else "chromedriver")
    return chromium, driver


@pytest.fixture(scope="module")
def run(browser_paths, tmp_path_factory) -> dict:
    """A finished 2-epoch digits run in its own storage and sqlite store, as `rto status --json` tells it."""
    directory = tmp_path_factory.mktemp("ui-browser")
    overrides = [*isolated(directory), "train.params.epochs=2"]
    done = subprocess.run(
        [RTO, "run", "configs/digits.yaml", *sum((["--set", s] for s in overrides), [])],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    status = subprocess.run(
        [RTO, "status", "--json", "--storage", str(directory / "rto-runs")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert status.returncode == 0, status.stderr
    state = json.loads(status.stdout)
    assert state["status"] == "SUCCEEDED"
    state["directory"] = directory
    return state


@pytest.fixture(scope="module")
def runs_link(run) -> str:
    """`rto ui` on the run's store, in its own process group; yields the deep link it prints."""
    directory = run["directory"]
    log = directory / "rto-ui.log"
    command = [RTO, "ui", "configs/digits.yaml", "--tracking-uri", run["mlflow"]["tracking_uri"],
               "--port", str(free_port())]
    with log.open("w") as out:  # a file, not a pipe: a pipe nobody drains would block the server
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True)
    try:
        link = _wait_for_link(process, log)
        yield link
    finally:
        _stop_group(process)


def _wait_for_link(process: subprocess.Popen, log: Path, timeout_s: float = 150) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(r"^MLflow UI: (\S+)", log.read_text(), re.MULTILINE)
        if found:
            return found.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.5)
    pytest.fail(f"rto ui printed no link (exit {process.poll()}):\n{log.read_text()[-3000:]}")


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM rto's group (rto stops the server's own group); then SIGKILL any group still left."""
    import psutil

    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    groups = {process.pid} | {_pgid(p.pid) for p in descendants} - {None}
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


def test_runs_page_lists_the_pipeline_run_with_its_steps_nested_under_it(browser, runs_link, run):
    from selenium.webdriver.common.by import By

    child_ids = {step: run["steps"][step]["mlflow_run_id"] for step in STEPS}
    browser.get(runs_link)
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


def test_run_page_shows_the_test_accuracy_of_the_pipeline(browser, runs_link, run):
    from selenium.webdriver.common.by import By

    expected = run["steps"]["evaluate"]["metrics"]["test_accuracy"]
    browser.get(f"{runs_link}/{run['mlflow']['run_id']}")
    try:
        row = _wait(browser, lambda b: next(iter(b.find_elements(
            By.XPATH, "//div[@role='row'][div[@role='cell'][normalize-space()='test_accuracy']]")), None),
            "test_accuracy row in the run's metrics")
        assert browser.find_element(By.CSS_SELECTOR, '[data-testid="runs-header"]').text == run["run_id"]
        shown = row.find_elements(By.XPATH, "./div[@role='cell']")[-1].text.strip()
        decimals = len(shown.partition(".")[2])
        assert abs(float(shown) - expected) <= 0.5 * 10**-decimals, f"test_accuracy shown as {shown}, run has {expected}"
        assert decimals >= 2, f"test_accuracy shown as {shown}: too coarse to tell runs apart"
    finally:
        _screenshot(browser, "ui-run.png")
