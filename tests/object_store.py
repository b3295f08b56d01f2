"""A real S3 API for the tests: moto's server on 127.0.0.1 (``moto[server]``, a dev dependency),
started in its own process group and stopped by that group's id.

Runs reach it as users reach any S3-compatible store: through the standard AWS variables
(``env()``), read by pyarrow's S3 filesystem, Ray Train's checkpoint upload and MLflow's boto3.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from typing import Iterator

from tests.conftest import free_port

#: Credentials moto accepts; distinctive, so a test can prove they never reach a log or record.
ACCESS_KEY = "rto-test-access-key"
SECRET_KEY = "rto-test-secret-3f9c1e7d"


class S3Server:
    """moto's S3 server on a free loopback port."""

    def __init__(self, process: subprocess.Popen, endpoint: str):
        self.process, self.endpoint = process, endpoint

    def env(self, **extra: str) -> dict[str, str]:
        """The variables that point pyarrow, Ray Train and boto3 at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata probe for credentials
            **extra,
        }

    def bucket(self, prefix: str = "rto") -> str:
        """A new, empty bucket; its name."""
        import boto3

        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client(boto3).create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key below ``prefix`` in ``bucket``."""
        import boto3

        pages = self.client(boto3).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def read(self, bucket: str, key: str) -> bytes:
        import boto3

        return self.client(boto3).get_object(Bucket=bucket, Key=key)["Body"].read()

    def write(self, bucket: str, key: str, data: bytes) -> None:
        import boto3

        self.client(boto3).put_object(Bucket=bucket, Key=key, Body=data)

    def client(self, boto3):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )


@contextlib.contextmanager
def s3_server(timeout_s: float = 60) -> Iterator[S3Server]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"moto's S3 server did not come up on {endpoint}") from None
                time.sleep(0.2)
        yield S3Server(process, endpoint)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
