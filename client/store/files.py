"""The store's temp-file prefix, batched durability and single-writer lock."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Iterable

from client.durable import fsync_dir
from client.store.errors import StoreError

TEMP_PREFIX = ".tmp-"


def sync_files(directory: Path, paths: Iterable[Path]) -> None:
    """Make ``paths`` (files written into ``directory`` with ``durable=False``, whose write-back
    started then) and their names durable: an fsync of each file, then of the directory.
    Never a sync of the whole file system (``syncfs``), which would also wait for every other
    process's unwritten data, such as an export copied in just before the ingest."""
    paths = list(paths)
    if not paths:
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(directory)


class WriterLock:
    """Exclusive, non-blocking ``flock`` on ``<store>/.lock``: one writer per store."""

    def __init__(self, root: Path) -> None:
        self._path = root / ".lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise StoreError(
                f"another process is writing the store at {self._path.parent}; rule: one "
                "writer at a time (ingest, collect, rotation); fix: wait for it to finish"
            ) from exc
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
