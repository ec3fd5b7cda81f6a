"""Versioned model files: ``<models>/<version>/`` holds model.pt, meta.json and the report.

A version directory is built under a temporary name and renamed into place in one step, so a
reader never sees half of one, a crash leaves only a ``.tmp-*`` directory (cleaned on the next
save), and an existing version is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from worker.model.modelzoo import LoadedModel, ModelError, checkpoint_dict, load_file

MODEL_FILE = "model.pt"
META_FILE = "meta.json"


class VersionExists(ModelError):
    pass


def version_dir(models_dir: Path, version: int) -> Path:
    return models_dir / str(version)


def save_version(
    models_dir: Path,
    version: int,
    loaded: LoadedModel,
    meta: dict[str, Any],
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write version ``version`` atomically. Raises :class:`VersionExists`, or OSError (disk
    full...) with nothing visible left behind."""
    models_dir.mkdir(parents=True, exist_ok=True)
    final = version_dir(models_dir, version)
    if final.exists():
        raise VersionExists(f"model version {version} already exists at {final}")
    clean_temporaries(models_dir)
    tmp = models_dir / f".tmp-{version}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        _torch_save(checkpoint_dict(loaded, {"version": version}), tmp / MODEL_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        for name, content in (extra_files or {}).items():
            (tmp / name).write_bytes(content)
        _fsync_dir_files(tmp)
        os.rename(tmp, final)  # atomic; fails if ``final`` appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _torch_save(obj: Any, path: Path) -> None:
    """torch.save through a Python file object, so that a failed write (disk full, quota)
    surfaces as the OSError it is. Given a path, torch's C++ writer reports ENOSPC only as an
    opaque ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos ...``; with a
    file object the OSError is kept as the RuntimeError's context, and re-raised here."""
    with open(path, "wb") as handle:
        try:
            torch.save(obj, handle)
        except RuntimeError as exc:
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, OSError):
                raise OSError(cause.errno, f"{cause.strerror} (writing {path})") from exc
            raise


def load_version(models_dir: Path, version: int) -> LoadedModel:
    path = version_dir(models_dir, version) / MODEL_FILE
    return load_file(path, arch="")


def clean_temporaries(models_dir: Path) -> None:
    """Remove leftovers of saves that died half-way."""
    for leftover in models_dir.glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _fsync_dir_files(directory: Path) -> None:
    for file in directory.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
