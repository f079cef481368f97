"""Shared fixtures: a real site (keys on disk) and a small-chunk store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.keys import SiteKeys, init_keys
from client.store import SiteStore

CHUNK = 64  # small chunks so tests see multi-chunk objects


@pytest.fixture()
def site(tmp_path: Path) -> tuple[Path, SiteKeys]:
    site_dir = tmp_path / "site"
    return site_dir, init_keys(site_dir)


@pytest.fixture()
def store(site) -> SiteStore:
    site_dir, keys = site
    s = SiteStore.create(site_dir, keys, chunk_size=CHUNK)
    yield s
    s.close()


def add(store: SiteStore, n: int, *, dicom: bytes | None = None, label: int = 1):
    """Add ``n`` images (distinct sources) and return their records."""
    out = []
    for i in range(n):
        out.append(store.add_image(
            source_key=f"src-{len(store.records())}-{i}-{id(out)}",
            dicom=dicom if dicom is not None else bytes([i % 256]) * (3 * CHUNK + 10),
            tensor=np.full((2, 3), i, dtype=np.float32),
            patient_key=f"pk-{i % 2}", label=label, meta={"modality": "CR", "rows": 2}))
    return out


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def object_path(store: SiteStore, record, kind: str) -> Path:
    """The file of a record's "dicom" or "tensor" object (ids are the store's own, random)."""
    entry = store._index[record.image_id]
    object_id = entry.dicom_object if kind == "dicom" else entry.tensor_object
    return store._root / "objects" / object_id
