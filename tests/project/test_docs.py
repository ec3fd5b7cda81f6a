"""The docs stay true: every setting is documented, CI runs the README's test command, the links
between the docs resolve, and every dotted name in the map of one image's path through the code
(docs/architecture.md) still exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from contract.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = {p.name: p.read_text() for p in (ROOT / "docs").glob("*.md")}
ARCHITECTURE = DOCS["architecture.md"]


def test_every_setting_is_documented() -> None:
    settings = DOCS["settings.md"]
    missing = [n for n in Settings.model_fields if f"`{ENV_PREFIX}{n.upper()}`" not in settings]
    assert not missing, f"docs/settings.md lacks settings: {missing}"


def test_every_number_setting_states_its_range() -> None:
    from contract.settings_errors import allowed_range

    rows = {
        line.split("`")[1]: line
        for line in DOCS["settings.md"].splitlines()
        if line.startswith(f"| `{ENV_PREFIX}")
    }
    wrong = [
        name
        for name in Settings.model_fields
        if (span := allowed_range(name)) and span not in rows[ENV_PREFIX + name.upper()]
    ]
    assert not wrong, f"docs/settings.md states another range than the code for {wrong}"


def test_ci_runs_the_readme_test_command() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    install, tests = blocks[0], blocks[1]
    assert "pip install" in install and "inbox-classifier up" in install
    command = tests.strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert any(line.strip() == command for line in ci.splitlines())


def test_the_readme_stays_short_and_links_every_doc() -> None:
    assert len(README.splitlines()) <= 300
    for name in DOCS:
        assert f"docs/{name}" in README, name


def _anchors(text: str) -> set[str]:
    heads = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in heads}


@pytest.mark.parametrize("name", ["README.md", *sorted(f"docs/{n}" for n in DOCS)])
def test_links_between_the_docs_resolve(name: str) -> None:
    path = ROOT / name
    text = path.read_text()
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", text):
        if target.startswith(("http://", "https://")):
            continue
        linked = (path.parent / target).resolve() if target else path
        assert linked.exists(), f"{name}: {target} does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked.read_text()), f"{name}: no #{anchor} in {target}"


def _dotted_names() -> list[str]:
    start = ARCHITECTURE.index("**One image, from the inbox to its row**")
    end = ARCHITECTURE.index("**Threads of each process:**")
    names = re.findall(r"`([a-z_]+(?:\.[A-Za-z_]+){1,4})`", ARCHITECTURE[start:end])
    return sorted({n for n in names if n.split(".")[0] in PACKAGES})


PACKAGES = {"watcher", "worker", "web", "pipeline", "db", "broker", "imaging", "contract"}


def test_the_data_path_map_names_real_code() -> None:
    names = _dotted_names()
    assert len(names) >= 20, names  # the map is there, and read
    missing = []
    for name in names:
        parts = name.split(".")
        for split in range(len(parts), 0, -1):  # the longest importable module prefix
            try:
                found: object = importlib.import_module(".".join(parts[:split]))
            except ImportError:
                continue
            try:
                for attribute in parts[split:]:
                    found = getattr(found, attribute)
            except AttributeError:
                missing.append(name)
            break
        else:
            missing.append(name)
    assert not missing, f"docs/architecture.md names code that does not exist: {missing}"
