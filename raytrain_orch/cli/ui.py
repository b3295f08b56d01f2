"""``rto ui``: the MLflow UI of a run's tracking store (a server's own, or ``mlflow ui`` on a
local store)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from raytrain_orch.cli.command import Command
from raytrain_orch.core.errors import EXIT_OK, OrchError


def add_ui_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="config whose MLflow store and experiment to open")
    parser.add_argument("--tracking-uri", help="MLflow store (default: the config's, else sqlite:///mlflow.db)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)


def cmd_ui(args: argparse.Namespace) -> int:
    from raytrain_orch.core.config import load_config
    from raytrain_orch.core.tracking_uri import resolve_tracking_uri
    from raytrain_orch.engine.process import interrupt_on_sigterm
    from raytrain_orch.tracking.tracker import Tracker

    config = load_config(args.config) if args.config else None
    uri = resolve_tracking_uri(args.tracking_uri or (config.mlflow.tracking_uri if config else "sqlite:///mlflow.db"))
    experiment = config.experiment if config else None
    link = ""
    if experiment:
        found = Tracker(uri).client.get_experiment_by_name(experiment)
        link = f"#/experiments/{found.experiment_id}/runs" if found else ""
    if uri.startswith(("http://", "https://")):
        print(f"MLflow UI: {uri.rstrip('/')}/{link}")
        return EXIT_OK
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    if mlflow_bin is None:
        raise OrchError("the mlflow command is not installed in this environment; run `make install`")
    command = [mlflow_bin, "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    interrupt_on_sigterm()  # stopping rto ui stops the server's whole process group too
    process = subprocess.Popen(command, start_new_session=True)  # own group: its workers stop with it
    base = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    print(f"starting the MLflow UI on {uri} …", flush=True)
    try:
        if _wait_healthy(f"{base}/health", process):
            print(f"MLflow UI: {base}/{link}  (Ctrl-C stops it)", flush=True)
        return process.wait()
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


def _wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = 120) -> bool:
    """Wait until the server answers, so the printed link works when clicked."""
    import urllib.request

    deadline = time.time() + timeout_s
    while time.time() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return False


UI = Command("ui", "start the MLflow UI on the configured store and print its URL", add_ui_arguments, cmd_ui)
