"""A real, throwaway PostgreSQL server for tests.

``PostgresServer`` runs ``initdb`` and ``pg_ctl`` from the installed PostgreSQL (Debian puts them
in /usr/lib/postgresql/<version>/bin) in a temporary directory, listening on 127.0.0.1 only (or
the ``host`` given, for tests across network namespaces), on a free port, with its unix socket
in that directory too. PostgreSQL refuses to run as root: when the tests run as root, the
server runs as the ``postgres`` OS user (``runuser``) and the directory is handed to that user.

The app connects the way a deployment does: over TCP, with a password (scram-sha-256), as a
non-superuser role that owns its database. ``restart()``, ``stop()`` and ``start()`` keep the
same port and data, for fault-injection tests.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import psycopg
from psycopg import sql

ShutdownMode = Literal["smart", "fast", "immediate"]

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_REQUIRED = ("initdb", "pg_ctl", "postgres")


def find_bindir() -> Path | None:
    """The directory with initdb, pg_ctl and postgres, or None if PostgreSQL is not installed.

    ``PG_BINDIR`` wins; then the newest /usr/lib/postgresql/*/bin; then ``pg_config --bindir``;
    then wherever ``initdb`` is on PATH.
    """
    candidates: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))

    def version(path: Path) -> tuple[int, str]:
        name = path.parent.name
        return (int(name) if name.isdigit() else -1, name)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for candidate in candidates:
        if all(os.access(candidate / tool, os.X_OK) for tool in _REQUIRED):
            return candidate
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresError(RuntimeError):
    pass


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory. Use :meth:`start` / :meth:`cleanup`."""

    superuser = "postgres"

    def __init__(
        self,
        bindir: Path,
        directory: Path | None = None,
        *,
        user: str = "inbox",
        database: str = "inbox",
        os_user: str | None = None,
        host: str = "127.0.0.1",
        clients: str | None = None,
    ) -> None:
        for name in (user, database):
            if not _NAME.match(name):
                raise ValueError(f"not a plain SQL identifier: {name!r}")
        self.bindir = bindir
        self.directory = Path(directory or tempfile.mkdtemp(prefix="inbox-pg-")).resolve()
        self.data_dir = self.directory / "data"
        self.socket_dir = self.directory
        self.log_file = self.directory / "postgres.log"
        self.user = user
        self.database = database
        self.password = secrets.token_hex(12)
        self.superuser_password = secrets.token_hex(12)
        self.port = 0
        self.host = host  # where it listens (and clients connect); loopback unless told
        self.clients = clients  # a network (CIDR) whose hosts may log in, besides loopback
        self._as_root = os.geteuid() == 0
        self.os_user = os_user or (_server_os_user() if self._as_root else None)
        self._initialized = False
        self._cleaned = False
        atexit.register(self.cleanup)

    # --- addresses ----------------------------------------------------------------------------

    def url(self, database: str | None = None) -> str:
        """SQLAlchemy URL for the app role (psycopg 3 driver)."""
        db = database or self.database
        return f"postgresql+psycopg://{self.user}:{self.password}@{self.host}:{self.port}/{db}"

    def dsn(self, database: str | None = None, *, superuser: bool = False) -> str:
        """libpq connection string, for psycopg directly."""
        user, password = (
            (self.superuser, self.superuser_password) if superuser else (self.user, self.password)
        )
        return (
            f"host={self.host} port={self.port} dbname={database or self.database} "
            f"user={user} password={password} connect_timeout=5"
        )

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> str:
        """Start the server (initialising the cluster and the app database the first time).

        Returns the app database URL. Starting a running server does nothing.
        """
        if self.running:
            return self.url()
        if not self._initialized:
            self._initdb()
        attempts = 3 if not self.port else 1  # a port picked by us may be taken meanwhile
        for attempt in range(attempts):
            if not self.port or attempt:
                self.port = free_port()
                self._write_config()
            result = self._pg_ctl("start", "-l", str(self.log_file), "-t", str(int(timeout)))
            if result.returncode == 0:
                break
            if attempt == attempts - 1:
                raise PostgresError(f"pg_ctl start failed:\n{result.stdout}\n{self.log_tail()}")
        self._wait_ready(timeout)
        if not self._app_role_ready():
            self._create_app_role()
        return self.url()

    def stop(self, mode: ShutdownMode = "fast", timeout: float = 60.0) -> None:
        """Stop the server. ``immediate`` is a crash as far as the database is concerned: no
        checkpoint, open connections cut, WAL recovery on the next start."""
        if not self.running:
            return
        result = self._pg_ctl("stop", "-m", mode, "-t", str(int(timeout)))
        if result.returncode != 0 and self.running:
            raise PostgresError(f"pg_ctl stop failed:\n{result.stdout}\n{self.log_tail()}")

    def restart(
        self, mode: ShutdownMode = "fast", down_for: float = 0.0, timeout: float = 60.0
    ) -> None:
        """Stop (``mode``), stay down for ``down_for`` seconds, start again on the same port."""
        self.stop(mode, timeout)
        if down_for > 0:
            time.sleep(down_for)
        self.start(timeout)

    def ensure_running(self) -> None:
        if not self.running:
            self.start()

    @property
    def running(self) -> bool:
        if not self._initialized or not (self.data_dir / "postmaster.pid").exists():
            return False
        return self._pg_ctl("status").returncode == 0

    def cleanup(self) -> None:
        """Stop the server (immediately) and delete its directory."""
        if self._cleaned:
            return
        self._cleaned = True
        with contextlib.suppress(Exception):
            if self.running:
                self._pg_ctl("stop", "-m", "immediate", "-t", "30")
        shutil.rmtree(self.directory, ignore_errors=True)

    # --- databases ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def admin(self, database: str = "postgres") -> Iterator[psycopg.Connection]:
        """A superuser connection (autocommit)."""
        with psycopg.connect(self.dsn(database, superuser=True), autocommit=True) as conn:
            yield conn

    def create_database(self, name: str) -> str:
        """An empty database owned by the app role; returns its SQLAlchemy URL."""
        if not _NAME.match(name):
            raise ValueError(f"not a plain SQL identifier: {name!r}")
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(self.user)
                )
            )
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, disconnecting whoever is still connected to it."""
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def terminate_connections(self, database: str | None = None) -> int:
        """Kill every backend connected to ``database`` (default: the app database), as a
        network blip or a DBA would. Returns how many were terminated."""
        with self.admin() as conn:
            row = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database or self.database,),
            ).fetchone()
        return int(row[0]) if row else 0

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- internals ----------------------------------------------------------------------------

    def _run(self, args: Sequence[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.os_user, "--"] if self._as_root and self.os_user else []
        return subprocess.run(
            [*prefix, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            cwd=self.directory,
            check=False,
        )

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run(
            [str(self.bindir / "pg_ctl"), *args[:1], "-D", str(self.data_dir), *args[1:]]
        )

    def _give_to_server_user(self, path: Path) -> None:
        if self._as_root and self.os_user:
            entry = pwd.getpwnam(self.os_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        self._give_to_server_user(self.directory)
        pwfile = self.directory / "superuser.pw"
        pwfile.write_text(self.superuser_password + "\n")
        pwfile.chmod(0o600)
        self._give_to_server_user(pwfile)
        result = self._run(
            [
                str(self.bindir / "initdb"),
                "-D", str(self.data_dir),
                "-U", self.superuser,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ]
        )  # fmt: skip
        pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise PostgresError(f"initdb failed (exit {result.returncode}):\n{result.stdout}")
        self._initialized = True

    def _write_config(self) -> None:
        """Our settings, in a file of their own that postgresql.conf includes."""
        conf = self.data_dir / "inbox_test.conf"
        conf.write_text(
            "\n".join(
                [
                    f"port = {self.port}",
                    f"listen_addresses = '{self.host}'",
                    f"unix_socket_directories = '{self.socket_dir}'",
                    "max_connections = 200",
                    # Durability against OS crashes is not what these tests are about; a
                    # stopped or killed server still loses nothing that was committed.
                    "fsync = off",
                    "synchronous_commit = off",
                    "full_page_writes = off",
                    "log_min_messages = warning",
                    "",
                ]
            )
        )
        self._give_to_server_user(conf)
        if self.clients:
            hba = self.data_dir / "pg_hba.conf"
            line = f"host all all {self.clients} scram-sha-256"
            if line not in hba.read_text():
                hba.write_text(hba.read_text() + f"\n{line}\n")
        main = self.data_dir / "postgresql.conf"
        text = main.read_text()
        if "include_if_exists = 'inbox_test.conf'" not in text:
            main.write_text(text + "\ninclude_if_exists = 'inbox_test.conf'\n")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn("postgres", superuser=True)) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise PostgresError(f"PostgreSQL did not accept connections: {exc}") from exc
                time.sleep(0.1)

    def _app_role_ready(self) -> bool:
        with self.admin() as conn:
            row = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
        return row is not None

    def _create_app_role(self) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(self.user), sql.Literal(self.password)
                )
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(self.database), sql.Identifier(self.user)
                )
            )


def _server_os_user() -> str:
    """The unprivileged OS user that runs the server when we are root."""
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise PostgresError("running as root and found no 'postgres' (or 'nobody') OS user")
