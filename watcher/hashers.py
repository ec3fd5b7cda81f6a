"""Where the watcher inspects and hashes files: on its own threads (``HASH_THREADS``; sha256 and
reads release the GIL), or in ``HASH_PROCESSES`` worker processes, which also take the
``lstat``/``realpath`` of every file off the watcher's process: its per-file Python work caps
threads at a few thousand files a second, whatever the cores (docs/performance.md)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from contract.chunks import chunked
from contract.records import SeenFile
from contract.settings import Settings
from watcher.filters import Scope, Signature, Skip, inspect
from watcher.hashing import NotHashable, hash_file, hash_many, inspect_many
from watcher.stats import StageClock

#: Paths per task of a hash process: the pickling is paid per chunk.
PROCESS_CHUNK = 128

Known = Callable[[list[str]], Mapping[str, Signature]]


class Hashers:
    def __init__(self, settings: Settings, clock: StageClock | None = None) -> None:
        self._clock = clock or StageClock()
        self._thread_count = settings.hash_threads
        self._threads = ThreadPoolExecutor(settings.hash_threads, thread_name_prefix="hash")
        # Processes started afresh, never forked from the watcher, whose threads may hold
        # locks at the moment of a fork.
        self._processes: Executor | None = (
            ProcessPoolExecutor(
                settings.hash_processes, mp_context=multiprocessing.get_context("forkserver")
            )
            if settings.hash_processes
            else None
        )

    def inspect(self, paths: list[str], scope: Scope) -> dict[str, Signature]:
        """Size and mtime of each of ``paths`` worth hashing (a rescan)."""
        if self._processes is None:
            found = [(p, inspect(p, scope)) for p in paths]
        else:
            chunks = _chunks(paths)
            results = self._processes.map(inspect_many, chunks, [scope] * len(chunks))
            found = [entry for chunk in results for entry in chunk]
        return {path: s for path, s in found if isinstance(s, Signature)}

    def hash(
        self, paths: list[str], scope: Scope, known: Known
    ) -> Iterable[tuple[str, SeenFile | NotHashable]]:
        """Each of ``paths`` hashed, unless it is no file to hash (skipped) or the ledger
        (``known``) has it with this size and mtime already."""
        if self._processes is None:
            signatures = {p: s for p in paths if isinstance(s := inspect(p, scope), Signature)}
            have = known(list(signatures))
            todo = [p for p, signature in signatures.items() if have.get(p) != signature]
            # A task per thread, not per file: a future per 60 KiB file cost a third as much
            # as hashing it.
            per_task = -(-len(todo) // self._thread_count) or 1
            tasks = [todo[i : i + per_task] for i in range(0, len(todo), per_task)]
            hashed = (found for task in self._threads.map(self._try_hash, tasks) for found in task)
            return zip(todo, hashed, strict=True)
        have = known(paths)
        chunks = _chunks(paths)
        results = self._processes.map(
            hash_many,
            chunks,
            [scope] * len(chunks),
            [{p: tuple(have[p]) for p in chunk if p in have} for chunk in chunks],
        )
        return (
            (path, found)
            for chunk in results
            for path, found in chunk
            if not isinstance(found, (Skip, str))
        )

    def _try_hash(self, paths: list[str]) -> list[SeenFile | NotHashable]:
        found: list[SeenFile | NotHashable] = []
        with self._clock.stage("hash"):
            for path in paths:
                try:
                    found.append(hash_file(path))
                except NotHashable as exc:
                    found.append(exc)
        return found

    def shutdown(self) -> None:
        self._threads.shutdown(wait=True)
        if self._processes is not None:
            self._processes.shutdown(wait=True)


def _chunks(paths: list[str]) -> list[list[str]]:
    return [list(part) for part in chunked(paths, PROCESS_CHUNK)]
