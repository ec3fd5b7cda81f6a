"""The CLI answers at once because it imports only what a command needs: checked by the modules
a fresh interpreter has loaded, not by a timer (docs/performance.md has the times)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY_FOR_HELP = {"sqlalchemy", "alembic", "celery", "kombu", "redis", "pydantic", "torch",
                  "torchvision", "numpy", "PIL", "onnxruntime", "rich"}
HEAVY_FOR_STATUS = {"alembic", "celery", "kombu", "torch", "torchvision", "onnxruntime", "PIL"}

PROBE = """
import json, sys
from inbox_classifier.cli import main
try:
    main({args!r}, standalone_mode=False)
except SystemExit:
    pass
except Exception:
    pass
print("MODULES " + json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
"""


def _loaded(args: list[str], cwd: Path) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("MODULES "))
    return set(json.loads(line.removeprefix("MODULES ")))


def test_help_loads_no_heavy_module(tmp_path: Path) -> None:
    for args in (["--help"], ["status", "--help"], ["retrain", "--help"]):
        loaded = _loaded(args, tmp_path)
        assert not (loaded & HEAVY_FOR_HELP) or args != ["--help"], loaded & HEAVY_FOR_HELP
        assert not (loaded & {"torch", "torchvision", "celery", "alembic"}), (args, loaded)


def test_status_and_results_load_neither_celery_nor_torch_nor_alembic(tmp_path: Path) -> None:
    for args in (["status"], ["results", "--limit", "20"]):
        loaded = _loaded(args, tmp_path)
        assert not (loaded & HEAVY_FOR_STATUS), (args, loaded & HEAVY_FOR_STATUS)
