"""Every process recovers from a database that refused for a moment, without a restart: while
the ledger's file is read-only the web app answers 503 with the reason (never 500), and once it
is writable again it writes again (it used to answer "attempt to write a readonly database" to
every write until it was restarted: SQLite keeps a connection it opened read-only so)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from contract.settings import Settings
from tests.helpers.web import client, seed_images


def _mount(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["mount", *args], capture_output=True, check=False)


@contextlib.contextmanager
def ledger_view(data_dir: Path, view: Path) -> Iterator[Callable[[bool], None]]:
    """``view`` showing ``data_dir``, its ledger file bind-mounted on its own; yields a function
    that makes that one file read-only (True) or writable again (False), as `chmod a-w` does
    for a user who is not root (root ignores permissions). Skips where it cannot mount."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to make the ledger's file read-only under this process")
    view.mkdir(parents=True, exist_ok=True)
    made = _mount("--bind", str(data_dir), str(view))
    if made.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {made.stderr.decode(errors='replace').strip()}")
    ledger = str(view / "results.db")
    try:
        assert _mount("--bind", str(data_dir / "results.db"), ledger).returncode == 0

        def read_only(on: bool) -> None:
            done = _mount("-o", "remount,ro,bind" if on else "remount,rw,bind", ledger)
            assert done.returncode == 0, done.stderr

        yield read_only
    finally:
        subprocess.run(["umount", "-l", ledger], capture_output=True, check=False)
        subprocess.run(["umount", "-l", str(view)], capture_output=True, check=False)


def test_the_web_app_answers_503_while_the_ledger_is_read_only_and_writes_again_after(
    settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    items = seed_images(settings, session_factory, [("cat", 0.6), ("dog", 0.6), ("cat", 0.7)])
    with ledger_view(settings.data_dir, tmp_path / "view") as read_only:
        s = settings.model_copy(
            update={"database_url": f"sqlite:///{tmp_path / 'view' / 'results.db'}"}
        )
        with client(s) as api:
            made = api.post("/api/labels", json={"sha256": items[0].sha256, "label": "cat"})
            assert made.status_code == 201, made.text
            # Nothing of this process keeps the file open for writing (a remount waits for
            # that); SQLite also holds a closed connection's descriptor while another
            # connection of the process locks the same file.
            api.app.state.web.close()  # type: ignore[attr-defined]
            session_factory.kw["bind"].dispose()
            read_only(True)
            try:
                # A connection opened now is opened read-only, and SQLite keeps it so.
                assert api.get(f"/api/images/{items[1].sha256}").status_code == 200
                body = {"sha256": items[1].sha256, "label": "dog"}
                refused = api.post("/api/labels", json=body)
                assert refused.status_code == 503, refused.text
                assert "database is unavailable" in refused.json()["detail"]
                assert "read-only" in refused.json()["detail"]
                assert refused.headers["Retry-After"]
            finally:
                read_only(False)
            codes = []
            for _ in range(3):  # the connection that saw it read-only is replaced, not reused
                codes.append(api.post("/api/labels", json=body).status_code)
                if codes[-1] == 201:
                    break
            assert codes[-1] == 201 and 500 not in codes, codes
            assert api.get(f"/api/images/{items[1].sha256}").json()["label"] == "dog"
