"""Atomic and durable writes: the write-back a non-durable write starts."""
import os
import sys

import pytest

from client.durable import start_writeback, write_atomic


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_write_back_starts_on_a_written_file_and_reports_a_bad_descriptor(tmp_path):
    path = tmp_path / "object"
    path.write_bytes(os.urandom(1 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert start_writeback(fd)
    finally:
        os.close(fd)
    assert not start_writeback(fd)  # closed: EBADF, not a crash


def test_a_non_durable_write_is_whole_and_private(tmp_path):
    path = tmp_path / "object"
    assert write_atomic(path, [b"a" * 5000, b"b" * 7], temp_prefix=".tmp-", durable=False) == 5007
    assert path.read_bytes() == b"a" * 5000 + b"b" * 7
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["object"]  # no temp file left
