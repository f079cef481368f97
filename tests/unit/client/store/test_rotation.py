"""Key rotation: headers re-wrapped, bodies untouched, the old kek opens nothing, crashes recover."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from client.keys import SiteKeyError, SiteKeys, init_keys, key_id_of, load_keys
from client.store import SiteStore, StoreError, rotate_site_kek
from client.store.envelope import HEADER_LEN, unseal

from .conftest import CHUNK, add


class Crash(Exception):
    """A simulated power loss at a rename."""


def _site_with_store(site_dir: Path) -> tuple[SiteKeys, dict[str, bytes], list]:
    keys = init_keys(site_dir)
    store = SiteStore.create(site_dir, keys, chunk_size=CHUNK)
    recs = add(store, 2)
    store.commit()
    add(store, 1)  # an uncommitted orphan: rotation must re-wrap it too
    store.close()
    reader = SiteStore.open(site_dir, keys)
    data = {r.image_id: reader.read_dicom(r.image_id) for r in recs}
    return keys, data, recs


def _store_files(site_dir: Path) -> dict[str, bytes]:
    root = site_dir / "store"
    return {p.name: p.read_bytes() for p in [root / "manifest", *(root / "objects").iterdir()]}


def _assert_old_opens_nothing(site_dir: Path, old: SiteKeys, new: SiteKeys) -> None:
    with pytest.raises(StoreError, match="the key does not open this store"):
        SiteStore.open(site_dir, old)
    for name, blob in _store_files(site_dir).items():
        assert blob[28:44].decode() == new.key_id
        forged = blob[:28] + old.key_id.encode() + blob[44:]  # even with the header claiming old
        with pytest.raises(StoreError):
            unseal(forged, kek=old.kek, key_id=old.key_id, site_id=old.site_id, object_id=name)
    for path in (site_dir / "keys").iterdir():
        assert old.kek not in path.read_bytes()
    with pytest.raises(SiteKeyError):  # the old kek cannot unwrap the site secret either
        (site_dir / "keys" / "kek").write_bytes(old.kek)
        try:
            load_keys(site_dir)
        finally:
            (site_dir / "keys" / "kek").write_bytes(new.kek)


def test_rotation_rewraps_headers_only(tmp_path):
    site_dir = tmp_path / "site"
    old, data, recs = _site_with_store(site_dir)
    before = _store_files(site_dir)
    new = rotate_site_kek(site_dir)
    after = _store_files(site_dir)
    assert before.keys() == after.keys() and len(after) == 7  # manifest + 3 images x 2 objects
    for name in before:
        assert after[name][HEADER_LEN:] == before[name][HEADER_LEN:]  # ciphertext body unchanged
        assert after[name][:28] == before[name][:28]  # fixed header part unchanged
        assert after[name][28:HEADER_LEN] != before[name][28:HEADER_LEN]  # key slot re-wrapped
    assert load_keys(site_dir) == new and new.site_secret == old.site_secret
    store = SiteStore.open(site_dir, new)
    assert store.verify()[0].startswith("orphan") and len(store.verify()) == 2
    for r in recs:
        assert store.read_dicom(r.image_id) == data[r.image_id]
        expected = np.full((2, 3), recs.index(r), dtype=np.float32)
        np.testing.assert_array_equal(store.read_tensor(r.image_id), expected)
    _assert_old_opens_nothing(site_dir, old, new)


def test_instance_rewrap(tmp_path):
    site_dir = tmp_path / "site"
    old, data, recs = _site_with_store(site_dir)
    store = SiteStore.open(site_dir, old)
    kek = os.urandom(32)
    new = SiteKeys(kek=kek, key_id=key_id_of(kek), site_secret=old.site_secret, site_id=old.site_id)
    store.rewrap(new)
    assert store.read_dicom(recs[0].image_id) == data[recs[0].image_id]
    assert SiteStore.open(site_dir, new).records() == store.records()
    with pytest.raises(StoreError, match="another site"):
        store.rewrap(init_keys(tmp_path / "other"))


def test_rotation_removes_leftover_temp_files(tmp_path):
    site_dir = tmp_path / "site"
    old, data, recs = _site_with_store(site_dir)
    objects = site_dir / "store" / "objects"
    victim = next(p for p in objects.iterdir())
    debris = objects / ".tmp-00112233aabbccdd"  # an interrupted write: a copy under the old kek
    debris.write_bytes(victim.read_bytes())
    new = rotate_site_kek(site_dir)
    assert not debris.exists()
    _assert_old_opens_nothing(site_dir, old, new)


def test_rotation_without_store(tmp_path):
    old = init_keys(tmp_path)
    new = rotate_site_kek(tmp_path)
    assert load_keys(tmp_path) == new != old


def test_crash_at_every_rename_is_recoverable(tmp_path, monkeypatch):
    real_replace = os.replace
    crash_points = 0
    for k in range(1, 40):
        site_dir = tmp_path / f"site{k}"
        old, data, recs = _site_with_store(site_dir)
        bodies = {n: b[HEADER_LEN:] for n, b in _store_files(site_dir).items()}
        calls = 0

        def replace(src, dst):
            nonlocal calls
            calls += 1
            if calls == k:
                raise Crash(f"power loss at rename {k}")
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        try:
            rotate_site_kek(site_dir)
            crashed = False
        except Crash:
            crashed = True
        finally:
            monkeypatch.setattr(os, "replace", real_replace)
        if not crashed:
            break
        crash_points += 1
        # the crashed site: either still fully on the old kek, or it says how to finish
        try:
            keys = load_keys(site_dir)
        except SiteKeyError as exc:
            assert "rotation was interrupted" in str(exc) and "keys rotate" in str(exc)
        else:
            assert keys == old and SiteStore.open(site_dir, keys).verify()[0].startswith("orphan")
        # re-running the rotation finishes it
        new = rotate_site_kek(site_dir)
        assert load_keys(site_dir) == new and new.site_secret == old.site_secret
        store = SiteStore.open(site_dir, new)
        assert all(p.startswith("orphan") for p in store.verify()) and len(store.verify()) == 2
        for r in recs:
            assert store.read_dicom(r.image_id) == data[r.image_id]
        assert {n: b[HEADER_LEN:] for n, b in _store_files(site_dir).items()} == bodies
        _assert_old_opens_nothing(site_dir, old, new)
    # renames: kek.new, 6 objects, manifest, site-secret, and the commit (kek.new -> kek)
    assert crash_points == 10


def test_passphrase_site_rotation_with_store(tmp_path, monkeypatch):
    monkeypatch.setenv("PW", "site passphrase")
    site_dir = tmp_path / "site"
    old = init_keys(site_dir, passphrase_env="PW")
    store = SiteStore.create(site_dir, old, chunk_size=CHUNK)
    (rec,) = add(store, 1)
    store.commit()
    store.close()
    new = rotate_site_kek(site_dir, passphrase_env="PW")
    assert new.kek != old.kek
    assert SiteStore.open(site_dir, load_keys(site_dir, passphrase_env="PW")).verify() == []
    with pytest.raises(StoreError, match="does not open"):
        SiteStore.open(site_dir, old)


def test_rotation_refuses_foreign_objects_and_changes_nothing_committed(tmp_path):
    site_dir = tmp_path / "site"
    old, data, recs = _site_with_store(site_dir)
    stranger = init_keys(tmp_path / "stranger")
    s = SiteStore.create(tmp_path / "stranger", stranger)
    add(s, 1)
    s.commit()
    foreign = next((tmp_path / "stranger" / "store" / "objects").iterdir())
    (site_dir / "store" / "objects" / foreign.name).write_bytes(foreign.read_bytes())
    with pytest.raises(StoreError, match="neither the current"):
        rotate_site_kek(site_dir)
    with pytest.raises(SiteKeyError, match="interrupted"):
        load_keys(site_dir)
    (site_dir / "store" / "objects" / foreign.name).unlink()  # the operator removes it
    new = rotate_site_kek(site_dir)
    assert SiteStore.open(site_dir, new).read_dicom(recs[0].image_id) == data[recs[0].image_id]
