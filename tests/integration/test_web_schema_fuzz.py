"""The API against its own OpenAPI schema, fuzzed by Schemathesis: the real `serve` process on a
real ledger (seeded images, a base model, a training run) and the test Redis, bounded examples.
No response may be a server error, and every response must be one the schema declares (status
code, content type, body shape, the Allow header of a 405).

One check is left out, with a reason: ``positive_data_acceptance`` expects every request the
schema allows to succeed, but cursors are opaque tokens only the server can make, and a label
must also be a safe folder name (no control characters, no look-alike separators: rules no
JSON-schema pattern states): those are refused with 400 and 422, as documented."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from contract.settings import Settings
from db.engine import transaction
from db.runs import create_queued
from inbox_classifier.redis_server import free_port
from tests.helpers.pipeline import wait_until
from tests.helpers.web import seed_images

pytestmark = pytest.mark.timeout(420)

EXCLUDED_CHECKS = "positive_data_acceptance"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.slow
def test_the_api_matches_its_schema_under_fuzzing(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    seeded = seed_images(settings, session_factory, [("cat", 0.9), ("dog", 0.55), ("cat", 0.7)])
    with transaction(session_factory) as session:
        run_id = create_queued(session, "manual")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    env = settings.with_env()
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "inbox_classifier", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_until(lambda: _answers(base + "/api/status"), 60, "the web app")
        # Real identifiers, so operations reach their logic instead of a 404.
        config = tmp_path / "schemathesis.toml"
        config.write_text(
            "[parameters]\n"
            f"sha256 = {json.dumps(seeded[0].sha256)}\n"
            "version_id = 1\n"
            f"run_id = {run_id}\n"
        )
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file",
                str(config),
                "run",
                base + "/openapi.json",
                "--checks",
                "all",
                "--exclude-checks",
                EXCLUDED_CHECKS,
                "--max-examples",
                "15",
                "--workers",
                "1",
                "--seed",
                "20261204",
            ],
            capture_output=True,
            text=True,
            timeout=360,
            cwd=tmp_path,
        )
    finally:
        server.terminate()
        server.wait(30)
    report = result.stdout + result.stderr
    served = log.read_text(errors="replace")
    assert result.returncode == 0, report[-12000:] + "\n--- server log ---\n" + served[-4000:]
    assert " passed" in report and "Traceback" not in served, report[-3000:]
