"""Durable, atomic file writes for the site's keys, ledger and store (files are 0600)."""
from __future__ import annotations

import ctypes
import os
import secrets
import sys
from pathlib import Path
from typing import Iterable


def write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (0600, O_EXCL: never overwrite) with ``data`` and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, parts: Iterable[bytes], *, temp_prefix: str | None = None,
                 sync_dir: bool = True, durable: bool = True) -> int:
    """Write ``parts`` to ``path`` atomically: a temp file in the same directory (named
    ``temp_prefix`` + random, default ``.<name>.tmp-``), fsync, rename, fsync the directory.
    Returns the number of bytes written.

    ``durable=False`` skips both fsyncs (the caller must make the file durable before
    anything durable names it) and starts the file's write-back, so that sync is short."""
    tmp = path.parent / f"{temp_prefix if temp_prefix is not None else f'.{path.name}.tmp-'}{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    size = 0
    try:
        try:
            for part in parts:
                view = memoryview(part)
                size += len(view)
                while view:
                    view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
            else:
                start_writeback(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir and durable:
        fsync_dir(path.parent)
    return size


def start_writeback(fd: int) -> bool:
    """Start writing ``fd``'s dirty pages to disk without waiting (Linux ``sync_file_range``;
    no durability by itself: a later fsync finds them written or on their way).
    Returns whether it started; elsewhere it does nothing."""
    return _SYNC_FILE_RANGE is not None and _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) == 0


def _sync_file_range():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE = _sync_file_range()


def fsync_dir(path: Path) -> None:
    """Make the directory entries of ``path`` (created, renamed, removed files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
