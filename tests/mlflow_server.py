"""`mlflow server` on 127.0.0.1 for the integration and end-to-end tests, its artifacts on disk or in S3."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


class Server:
    """`mlflow server` on 127.0.0.1 in its own process group (its workers stop with it)."""

    def __init__(self, directory: Path, port: int, artifacts: str | None = None, env: dict[str, str] | None = None):
        self.directory, self.port, self.process = directory, port, None
        self.uri = f"http://127.0.0.1:{port}"
        self.artifacts = artifacts or str(directory / "mlflow-artifacts")  # a local directory or s3://…
        self.env = env or {}

    def start(self) -> None:
        log = (self.directory / "mlflow-server.log").open("a")
        command = [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            f"sqlite:///{self.directory / 'mlflow.db'}",
            "--artifacts-destination",
            self.artifacts,
            "--workers",
            "1",
        ]
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **self.env}
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"mlflow server exited: {(self.directory / 'mlflow-server.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise AssertionError("mlflow server did not answer /health in 120 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
