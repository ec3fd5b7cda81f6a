"""The README stays true: every setting is documented, and CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

from contract.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [n for n in Settings.model_fields if f"`{ENV_PREFIX}{n.upper()}`" not in README]
    assert not missing, f"README lacks settings: {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    install, tests = blocks[0], blocks[1]
    assert "pip install" in install and "inbox-classifier up" in install
    command = tests.strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert command in ci.splitlines() or any(line.strip() == command for line in ci.splitlines())
