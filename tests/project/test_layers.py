"""The layers hold: import-linter's contracts (pyproject.toml) pass, the contract package stays
free of third-party imports as dependencies are added, and the processes that must never pay
for torch (the watcher, the CLI's help) do not load it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_import_linter_contracts_are_kept() -> None:
    lint = shutil.which("lint-imports")
    assert lint, "import-linter is part of the test extra"
    out = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_the_contract_forbids_every_dependency_but_pydantic() -> None:
    """A new runtime dependency must be forbidden in contract/ too (or be pydantic's)."""
    declared = {
        re.split(r"[<>=!\[ ;]", dep, maxsplit=1)[0].lower()
        for dep in PYPROJECT["project"]["dependencies"]
    }
    # distribution name -> top-level module
    import_names = {
        "pillow": "pil",
        "prometheus-client": "prometheus_client",
        "python-multipart": "python_multipart",
    }
    contract = next(
        c
        for c in PYPROJECT["tool"]["importlinter"]["contracts"]
        if c.get("source_modules") == ["contract"]
    )
    forbidden = {m.lower() for m in contract["forbidden_modules"]}
    missing = {
        import_names.get(d, d)
        for d in declared
        if not d.startswith("pydantic") and import_names.get(d, d) not in forbidden
    }
    assert not missing, f"add to the contract's forbidden_modules: {sorted(missing)}"


def _imported_modules(*args: str) -> set[str]:
    """Top-level modules a fresh interpreter imports running ``python -X importtime ARGS``."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    names = set()
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert "encodings" in names  # the probe itself works
    return names


def test_the_watcher_loads_no_torch() -> None:
    loaded = _imported_modules("-c", "import watcher.service")
    assert "watcher" in loaded and not loaded & {"torch", "torchvision"}


def test_the_cli_help_loads_no_torch() -> None:
    loaded = _imported_modules("-m", "inbox_classifier", "--help")
    assert {"click", "inbox_classifier"} <= loaded and not loaded & {"torch", "torchvision"}
