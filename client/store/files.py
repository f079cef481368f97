"""Durable file writes and the store's single-writer lock. Only ciphertext goes through here."""

from __future__ import annotations

import fcntl
import os
import secrets
from pathlib import Path
from typing import Iterable

from client.store.errors import StoreError

TEMP_PREFIX = ".tmp-"


def write_atomic(path: Path, parts: Iterable[bytes], *, sync_dir: bool = True) -> int:
    """Write ``parts`` to ``path`` atomically (temp file in the same directory, fsync,
    rename, fsync directory); files are 0600. Returns the number of bytes written."""
    tmp = path.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    size = 0
    try:
        try:
            for part in parts:
                view = memoryview(part)
                size += len(view)
                while view:
                    view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)
    return size


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
