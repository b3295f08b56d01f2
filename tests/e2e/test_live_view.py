"""`rto run` as a user sees it: a live view in a terminal, the plain lines in a pipe or a log."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, write_config

pytestmark = pytest.mark.e2e

RTO = str(Path(sys.executable).parent / "rto")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PLAIN_LINE = re.compile(r"^\d\d:\d\d:\d\d  ", re.MULTILINE)


def run_in_terminal(args: list[str], columns: int = 120, timeout_s: float = 120) -> tuple[int, str]:
    """Run ``rto`` with a pseudo-terminal as its stdin, stdout and stderr; return its exit code and
    everything it wrote, escape sequences included."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k != "RTO_PLAIN_PROGRESS"} | {
        "TERM": "xterm",
        "COLUMNS": str(columns),
    }
    process = subprocess.Popen(
        [RTO, *args], cwd=REPO, env=env, stdin=follower, stdout=follower, stderr=follower, start_new_session=True
    )
    os.close(follower)
    output, deadline = b"", time.monotonic() + timeout_s
    try:
        # Ray's own processes may hold the terminal after rto exits: read until rto is gone and quiet.
        while time.monotonic() < deadline:
            if select.select([leader], [], [], 0.5)[0]:
                try:
                    output += os.read(leader, 65536)
                    continue
                except OSError:  # EIO: every writer closed the terminal
                    break
            if process.poll() is not None:
                break
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    return process.wait(timeout=30), output.decode(errors="replace")


def test_a_terminal_gets_the_live_view_and_a_pipe_the_plain_lines(tmp_path):
    config = write_config(
        tmp_path,
        "fanout",
        "tests.pipelines.fanout:pipeline",
        {"left": {"params": {"seconds": 0}}, "right": {"params": {"seconds": 0}}},
    )

    code, shown = run_in_terminal(["run", str(config)])

    assert code == 0, shown
    assert "\x1b[?25l" in shown and "\x1b[?25h" in shown  # drawn in place, and the cursor given back
    final = ANSI.sub("", shown.rsplit("\x1b[2K", 1)[-1]).replace("\r", "")  # the picture left on screen
    rows = {line.split()[0]: line.split()[1:3] for line in final.splitlines() if line.split()}
    assert rows["left"][0] == rows["right"][0] == rows["join"][0] == "done"
    assert re.search(r"^run fanout-\S+  succeeded  elapsed (\d+\.\d s|\d+ min( \d+ s)?)$", final, re.MULTILINE)
    assert re.search(r"^run fanout-\S+ SUCCEEDED$", final, re.MULTILINE)  # the summary follows the view
    assert not PLAIN_LINE.search(ANSI.sub("", shown).replace("\r", ""))

    # The same run again, piped: every step is a cache hit (no Ray starts), told in plain lines.
    piped = subprocess.run([RTO, "run", str(config)], cwd=REPO, capture_output=True, text=True, timeout=120)

    assert piped.returncode == 0, piped.stdout + piped.stderr
    assert "\x1b[" not in piped.stdout
    lines = [line.split("  ", 1)[1] for line in piped.stdout.splitlines() if PLAIN_LINE.match(line)]
    assert [line.split()[:2] for line in lines if "cached" in line] == [
        ["left", "cached"],
        ["right", "cached"],
        ["join", "cached"],
    ]
