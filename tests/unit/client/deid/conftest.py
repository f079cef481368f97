"""Shared fixtures: a Deidentifier and pydicom's real corpus (read with force=False)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files

from client.deid import Deidentifier

from .helpers import SECRET


@pytest.fixture
def deid() -> Deidentifier:
    return Deidentifier(site_secret=SECRET)


@pytest.fixture(scope="session")
def corpus() -> tuple[list[str], list[str]]:
    """(readable files, unreadable entries) of pydicom's corpus, read with force=False."""
    readable, unreadable = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(get_testdata_files()):
            if not os.path.isfile(path):
                unreadable.append(path)
                continue
            try:
                pydicom.dcmread(path, stop_before_pixels=True)
                readable.append(path)
            except Exception:
                unreadable.append(path)
    return readable, unreadable


@pytest.fixture(scope="session")
def dicomdir_root(corpus) -> Path:
    return next(Path(p).parent for p in corpus[0] if p.endswith("dicomdirtests/DICOMDIR"))
