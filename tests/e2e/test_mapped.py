"""A mapped step's driver SIGKILLed mid-map, then ``rto resume``: the finished items are reused,
only the others run. Real processes: ``rto run`` and ``rto resume`` on the local runtime."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.conftest import REPO, write_config

pytestmark = pytest.mark.e2e

RTO = str(Path(sys.executable).parent / "rto")
NAMES = ["north", "south", "east", "west", "up"]


def test_a_driver_killed_mid_map_resumes_with_the_finished_items_reused(tmp_path):
    steps = {
        "split": {"params": {"names": NAMES}},
        "fit": {"params": {"seconds": 1.5}, "map": {"max_concurrency": 1}},
    }
    config = write_config(tmp_path, "segments", "tests.pipelines.mapped:segments", steps)
    store = RunStore(Storage(str(tmp_path / "rto-runs")))
    driver = subprocess.Popen([RTO, "run", str(config)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.time() + 240

    def finished_items() -> list[str]:
        try:
            state = store.latest()
        except Exception:  # noqa: BLE001 — no record yet
            return []
        return [n for n, s in state.steps.items() if s.parent == "fit" and s.status is Status.SUCCEEDED]

    while len(finished_items()) < 2 and time.time() < deadline and driver.poll() is None:
        time.sleep(0.2)
    assert len(finished_items()) >= 2, "two items never finished"
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=60)
    killed = store.latest()
    done_before = sorted(finished_items())
    assert len(done_before) < len(NAMES)  # killed mid-map

    resumed = subprocess.run(
        [RTO, "resume", killed.run_id, "--storage", str(tmp_path / "rto-runs")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    state = store.load(killed.run_id)
    assert state.status is Status.SUCCEEDED
    units = {f"fit[{i}]": state.steps[f"fit[{i}]"].status for i in range(len(NAMES))}
    reused = {name for name, status in units.items() if status is Status.CACHED}
    # Those recorded done were reused; one more only if it stored its output as the driver died.
    assert set(done_before) <= reused and len(reused) <= len(done_before) + 1
    assert all(status in (Status.CACHED, Status.SUCCEEDED) for status in units.values())
    assert state.steps["pick"].metrics["units"] == float(len(NAMES))
