"""The store's temp-file prefix, batched durability and single-writer lock."""

from __future__ import annotations

import ctypes
import fcntl
import os
import platform
import sys
from pathlib import Path
from typing import Iterable

from client.durable import fsync_dir
from client.store.errors import StoreError

TEMP_PREFIX = ".tmp-"


def sync_files(directory: Path, paths: Iterable[Path]) -> None:
    """Make ``paths`` (files written into ``directory`` with ``durable=False``) and their
    names durable: one ``syncfs(2)`` of the file system on Linux >= 5.8 (which reports
    write-back errors), else an fsync of each file and then of the directory."""
    paths = list(paths)
    if not paths:
        return
    if _SYNCFS is not None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            if _SYNCFS(fd) == 0:
                return
        finally:
            os.close(fd)
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(directory)


def _syncfs():
    """libc's syncfs where it reports write-back errors (Linux >= 5.8), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        major, minor = (int(part) for part in platform.release().split(".")[:2])
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (ValueError, OSError, AttributeError):
        return None
    function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
    return function if (major, minor) >= (5, 8) else None


_SYNCFS = _syncfs()


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
