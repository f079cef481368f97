"""The site store: round trip, random names, tampering, wrong keys, plaintext hygiene, atomicity."""

from __future__ import annotations

import os
import re
import stat

import numpy as np
import pytest

from client.keys import init_keys, load_keys
from client.store import ImageRecord, SiteStore, StoreError

from .conftest import CHUNK, add, object_path, snapshot


def test_round_trip_and_reopen(site, store):
    site_dir, keys = site
    dicom = os.urandom(5 * CHUNK + 7)
    tensor = np.random.default_rng(0).standard_normal((1, 8, 8)).astype(np.float16)
    rec = store.add_image(source_key="s1", dicom=dicom, tensor=tensor, patient_key="pk",
                          label=1, meta={"modality": "MR", "rows": 8, "spacing": 0.5}, split="train")
    assert isinstance(rec, ImageRecord) and store.records() == []  # pending until commit
    assert store.read_dicom(rec.image_id) == dicom  # readable before commit by its writer
    store.commit()
    store.close()
    again = SiteStore.open(site_dir, load_keys(site_dir))
    (got,) = again.records()
    assert got == rec and got.meta["spacing"] == 0.5 and got.split == "train"
    assert again.read_dicom(rec.image_id) == dicom
    out = again.read_tensor(rec.image_id)
    assert out.dtype == np.float16 and out.shape == (1, 8, 8)
    np.testing.assert_array_equal(out, tensor)
    assert again.verify() == []


def test_create_refuses_existing_and_open_or_create(site, store):
    site_dir, keys = site
    with pytest.raises(StoreError, match="already exists"):
        SiteStore.create(site_dir, keys)
    add(store, 1)
    store.commit()
    assert len(SiteStore.open_or_create(site_dir, keys).records()) == 1
    fresh = SiteStore.open_or_create(site_dir.parent / "other", keys)
    assert fresh.records() == [] and fresh.verify() == []


def test_open_missing_store_names_the_fix(site):
    with pytest.raises(StoreError, match="no store at .*fedrad-site ingest"):
        SiteStore.open(*site)


def test_store_files_are_private(site, store):
    add(store, 1)
    store.commit()
    root = site[0] / "store"
    for path in [root, root / "objects"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    for path in (root / "objects").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "manifest").stat().st_mode) == 0o600


def test_object_names_are_random_not_from_content(site, store):
    same = b"identical dicom bytes" * 10
    recs = add(store, 2, dicom=same)
    store.commit()
    objects = site[0] / "store" / "objects"
    names = sorted(p.name for p in objects.iterdir())
    assert len(names) == 4 and all(re.fullmatch(r"[0-9a-f]{32}", n) for n in names)
    assert not {r.image_id for r in recs} & set(names)
    dicoms = [p.read_bytes() for p in objects.iterdir() if p.stat().st_size == len(same) + 84 + 16 * 4]
    assert len(dicoms) == 2 and dicoms[0][84:] != dicoms[1][84:]  # same plaintext, new data key


def test_idempotent_ingest(site, store):
    store.add_image(source_key="hmac-1", dicom=b"d", tensor=np.zeros(2, np.float32),
                    patient_key="p", label=0, meta={})
    assert store.has_source("hmac-1") and not store.has_source("hmac-2")
    with pytest.raises(StoreError, match="already in the store"):
        store.add_image(source_key="hmac-1", dicom=b"d", tensor=np.zeros(2, np.float32),
                        patient_key="p", label=0, meta={})
    store.commit()
    store.close()
    assert SiteStore.open(*site).has_source("hmac-1")


@pytest.mark.parametrize("bad", [
    dict(label=2), dict(label=True), dict(patient_key=""), dict(meta={"x": [1]}),
    dict(meta={"x": None}), dict(split="holdout"), dict(source_key=""),
    dict(tensor=np.zeros(2, np.int32)), dict(dicom="not bytes"),
])
def test_bad_inputs_refused_before_writing(site, store, bad):
    args = dict(source_key="s", dicom=b"d", tensor=np.zeros(2, np.float32), patient_key="p",
                label=0, meta={"rows": 2})
    with pytest.raises(StoreError):
        store.add_image(**{**args, **bad})
    assert list((site[0] / "store" / "objects").iterdir()) == []


def test_flipping_any_byte_of_an_object_fails(site, store):
    (rec,) = add(store, 1, dicom=b"Q" * (CHUNK + 20))  # two chunks
    store.commit()
    path = object_path(store, rec, "dicom")
    blob = path.read_bytes()
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x04
        path.write_bytes(bad)
        with pytest.raises(StoreError) as err:
            store.read_dicom(rec.image_id)
        assert err.value.object_id == path.name and "QQQQ" not in str(err.value)
    path.write_bytes(blob)
    assert store.read_dicom(rec.image_id) == b"Q" * (CHUNK + 20)


def test_flipping_any_byte_of_the_manifest_fails_open(site, store):
    add(store, 1)
    store.commit()
    path = site[0] / "store" / "manifest"
    blob = path.read_bytes()
    for i in range(0, len(blob), 3):
        bad = bytearray(blob)
        bad[i] ^= 0x10
        path.write_bytes(bad)
        with pytest.raises(StoreError, match="manifest"):
            SiteStore.open(*site)
    path.write_bytes(blob)
    assert len(SiteStore.open(*site).records()) == 1


def test_swapped_objects_fail_and_verify_names_them(site, store):
    a, b = add(store, 2)
    store.commit()
    pa, pb = object_path(store, a, "dicom"), object_path(store, b, "dicom")
    ba, bb = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(bb)
    pb.write_bytes(ba)
    for rec, path in ((a, pa), (b, pb)):
        with pytest.raises(StoreError, match="failed authentication") as err:
            store.read_dicom(rec.image_id)
        assert err.value.object_id == path.name
    problems = store.verify()
    assert len(problems) == 2 and all("failed authentication" in p for p in problems)
    assert any(pa.name in p for p in problems) and any(pb.name in p for p in problems)


def test_dicom_object_swapped_into_tensor_slot_fails(site, store):
    (rec,) = add(store, 1)
    store.commit()
    tensor = object_path(store, rec, "tensor")
    tensor.write_bytes(object_path(store, rec, "dicom").read_bytes())
    with pytest.raises(StoreError, match=tensor.name):
        store.read_tensor(rec.image_id)


def test_truncated_and_reordered_object_fail_verify(site, store):
    a, b = add(store, 2, dicom=b"z" * (3 * CHUNK))  # three full chunks each
    store.commit()
    step = CHUNK + 16
    pa, pb = object_path(store, a, "dicom"), object_path(store, b, "dicom")
    pa.write_bytes(pa.read_bytes()[:-step])  # drop the last chunk
    blob = pb.read_bytes()
    pb.write_bytes(blob[:84] + blob[84 + step:84 + 2 * step] + blob[84:84 + step] + blob[84 + 2 * step:])
    problems = store.verify()
    assert len(problems) == 2
    assert any(pa.name in p for p in problems) and any(pb.name in p for p in problems)


def test_missing_object_reported(site, store):
    (rec,) = add(store, 1)
    store.commit()
    path = object_path(store, rec, "tensor")
    path.unlink()
    (problem,) = store.verify()
    assert problem.startswith("missing: object " + path.name)
    with pytest.raises(StoreError, match="missing"):
        store.read_tensor(rec.image_id)


def test_wrong_key_one_clear_error_and_store_unchanged(site, store, tmp_path):
    site_dir, keys = site
    add(store, 2)
    store.commit()
    store.close()
    before = snapshot(site_dir)
    stranger = init_keys(tmp_path / "stranger")
    for wrong in (stranger, type(keys)(kek=stranger.kek, key_id=stranger.key_id,
                                        site_secret=keys.site_secret, site_id=keys.site_id)):
        for opener in (SiteStore.open, SiteStore.open_or_create):
            with pytest.raises(StoreError, match=r"key does not open this store.*fix: use the site's kek"):
                opener(site_dir, wrong)
    # a forged key id with the wrong kek fails authentication, not silently
    forged = type(keys)(kek=stranger.kek, key_id=keys.key_id, site_secret=keys.site_secret,
                        site_id=keys.site_id)
    with pytest.raises(StoreError, match="does not unwrap"):
        SiteStore.open(site_dir, forged)
    assert snapshot(site_dir) == before


def test_no_plaintext_on_disk(site, tmp_path):
    site_dir, keys = site
    marker = b"<<FEDRAD-PLAINTEXT-MARKER-7f3a>>"  # 32 bytes
    tensor = np.frombuffer(marker * 8, dtype=np.float32).reshape(8, 8)
    s = SiteStore.create(site_dir, keys, chunk_size=CHUNK)
    needles = [marker, marker[:12], marker[-12:], b"patient-PHI-ish-key", b"source-hmac-value",
               b"VendorNameXYZ"]

    def assert_clean():
        for path in site_dir.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for needle in needles:
                    assert needle not in data, (path, needle)

    rec = s.add_image(source_key="source-hmac-value", dicom=b"DICM" + marker * 50, tensor=tensor,
                      patient_key="patient-PHI-ish-key", label=1,
                      meta={"manufacturer": "VendorNameXYZ"})
    assert_clean()  # written but uncommitted
    s.commit()
    assert_clean()
    assert s.read_dicom(rec.image_id).count(marker) == 50 and s.verify() == []
    np.testing.assert_array_equal(s.read_tensor(rec.image_id), tensor)
    s.info()
    s.close()
    from client.store import rotate_site_kek

    rotate_site_kek(site_dir)
    assert_clean()
    out = tmp_path / "audit"
    assert SiteStore.open(site_dir, load_keys(site_dir)).export_dicom(out) == 1
    assert_clean()  # export went outside the site directory
    assert marker in (out / f"{rec.image_id}.dcm").read_bytes()


def test_crash_before_commit_leaves_orphans_and_manifest_unchanged(site, store):
    site_dir, keys = site
    (kept,) = add(store, 1)
    store.commit()
    manifest = site_dir / "store" / "manifest"
    before = manifest.read_bytes()
    (lost,) = add(store, 1)
    store.close()  # the process dies before commit
    assert manifest.read_bytes() == before
    again = SiteStore.open(site_dir, keys)
    assert [r.image_id for r in again.records()] == [kept.image_id]
    problems = again.verify()
    assert len(problems) == 2 and all(p.startswith("orphan: object ") for p in problems)
    assert again.collect_orphans() == 2
    assert again.verify() == [] and len(list((site_dir / "store" / "objects").iterdir())) == 2
    with pytest.raises(StoreError, match="no image"):
        again.read_dicom(lost.image_id)


def test_crash_during_commit_keeps_old_manifest(site, store, monkeypatch):
    site_dir, keys = site
    add(store, 1)
    store.commit()
    before = (site_dir / "store" / "manifest").read_bytes()
    add(store, 1)

    def crash(src, dst):
        raise OSError("simulated power loss")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.commit()
    monkeypatch.undo()
    assert (site_dir / "store" / "manifest").read_bytes() == before
    assert len(SiteStore.open(site_dir, keys).records()) == 1


def test_leftover_temp_files_reported_and_collected(site, store):
    add(store, 1)
    store.commit()
    debris = site[0] / "store" / "objects" / ".tmp-0123456789abcdef"
    debris.write_bytes(b"half-written ciphertext")
    (problem,) = store.verify()
    assert problem.startswith("temp: ")
    assert store.collect_orphans() == 1 and store.verify() == [] and not debris.exists()


def test_one_writer_at_a_time_and_no_lost_commits(site, store):
    site_dir, keys = site
    other = SiteStore.open(site_dir, keys)
    add(store, 1)
    with pytest.raises(StoreError, match="another process is writing"):
        add(other, 1)
    with pytest.raises(StoreError, match="another process is writing"):
        other.collect_orphans()
    store.commit()
    store.close()
    add(other, 1)  # takes the lock and sees the first writer's commit
    other.commit()
    assert len(SiteStore.open(site_dir, keys).records()) == 2


def test_info_has_counts_and_no_phi(site, store):
    add(store, 3)
    store.commit()
    info = store.info()
    assert (info["images"], info["patients"], info["positives"], info["objects"]) == (3, 2, 3, 6)
    assert info["format_version"] == 1 and info["key_id"] == site[1].key_id and info["bytes"] > 0
    assert "pk-0" not in repr(info) and "src-" not in repr(info)


def test_export_writes_plaintext_named_by_image_id(site, store, tmp_path):
    recs = add(store, 2)
    store.commit()
    out = tmp_path / "export"
    assert store.export_dicom(out) == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{r.image_id}.dcm" for r in recs)
    for r in recs:
        assert (out / f"{r.image_id}.dcm").read_bytes() == store.read_dicom(r.image_id)
    with pytest.raises(StoreError, match="inside the encrypted store"):
        store.export_dicom(site[0] / "store" / "clear")


def _seal(store: SiteStore, fill: int):
    return store.seal_image(dicom=bytes([fill]) * (2 * CHUNK + 3), tensor=np.full((2,), fill, np.float32),
                            patient_key="pk", label=1, meta={"rows": 2})


def test_sealed_images_join_the_store_only_when_added(site, store):
    site_dir, keys = site
    store.collect_orphans()  # takes the writer lock, as ingest does before its workers fork
    kept, dropped, lost = _seal(store, 1), _seal(store, 2), _seal(store, 3)
    assert store.records() == [] and len(list((site_dir / "store" / "objects").iterdir())) == 6
    store.add_sealed("source-1", kept)
    with pytest.raises(StoreError, match="already in the store"):
        store.add_sealed("source-1", dropped)
    store.discard_sealed(dropped)
    store.commit()
    store.close()  # `lost` was sealed, never added: an orphan, as after a crash
    again = SiteStore.open(site_dir, keys)
    assert [r.image_id for r in again.records()] == [kept.record.image_id]
    assert again.read_dicom(kept.record.image_id) == bytes([1]) * (2 * CHUNK + 3)
    assert again.verify() == [f"orphan: object {oid} is not in the manifest (an ingest that never "
                              "committed); fix: collect_orphans(), e.g. by running the ingest again"
                              for oid in sorted((lost.dicom_object, lost.tensor_object))]
    assert again.collect_orphans() == 2 and again.verify() == []


def test_only_the_writer_seals(site, store):
    with pytest.raises(StoreError, match="only by the store's writer"):
        _seal(store, 1)  # no writer lock taken yet
    assert list((site[0] / "store" / "objects").iterdir()) == []


def test_a_sealed_image_crosses_a_process_boundary(site, store):
    import pickle

    store.collect_orphans()
    sealed = _seal(store, 4)
    assert pickle.loads(pickle.dumps(sealed)) == sealed  # ingest workers return it to the writer
