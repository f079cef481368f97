"""Ingest real files: synthetic hospitals and pydicom's whole test corpus."""
import csv
import hashlib
import os
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files

from client.ingest import ingest
from client.ingest_pool import WorkerDied
from client.keys import init_keys, load_keys
from client.labels import LabelsError
from client.sitedata import NoSiteData, load_site_data
from client.store import SiteStore


def _digests(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_ingest_is_complete_idempotent_and_leaves_originals_alone(tmp_path, small_export):
    before = _digests(small_export)
    keys = init_keys(tmp_path / "site")
    first = ingest(tmp_path / "site", small_export / "dicom", small_export / "labels.csv", keys=keys)
    images = sum(1 for _ in (small_export / "dicom").rglob("*.dcm"))
    assert first.ingested == images and not first.rejected and not first.quarantined
    second = ingest(tmp_path / "site", small_export / "dicom", small_export / "labels.csv", keys=keys)
    assert second.ingested == 0 and second.already_in_store == images
    assert _digests(small_export) == before
    store = SiteStore.open(tmp_path / "site", keys)
    assert len(store.records()) == images
    data = load_site_data(store, 32)
    assert data.train_images.shape[1:] == (1, 32, 32)
    assert len(data.train_images) + len(data.val_images) == images
    assert not set(data.train_patients) & {r.patient_key for r in store.records()
                                           if r.patient_key not in data.train_patients}
    reports = list((tmp_path / "site" / "reports").glob("ingest-*.json"))
    assert len(reports) == 2


def test_bad_files_are_rejected_by_reason_and_do_not_stop_the_rest(tmp_path, small_export):
    export = tmp_path / "export"
    shutil.copytree(small_export / "dicom", export)
    good = sorted(export.rglob("*.dcm"))
    truncated = export / "broken.dcm"
    truncated.write_bytes(good[0].read_bytes()[:900])
    (export / "notes.txt").write_text("not an image")
    keys = init_keys(tmp_path / "site")
    summary = ingest(tmp_path / "site", export, small_export / "labels.csv", keys=keys)
    assert summary.ingested == len(good)
    assert summary.rejected["not-dicom"] == 1
    assert sum(summary.rejected.values()) == 2


def test_labels_naming_missing_images_are_counted(tmp_path, small_export):
    labels = tmp_path / "labels.csv"
    rows = (small_export / "labels.csv").read_text().splitlines()
    labels.write_text("\n".join(rows + ["1.2.3.4.5.6.7.8.9,1", "1.2.3.4.5.6.7.8.10,0"]) + "\n")
    summary = ingest(tmp_path / "site", small_export / "dicom", labels, keys=init_keys(tmp_path / "site"))
    assert summary.labels_without_image == 2


@pytest.mark.parametrize("content, fragment", [
    ("uid,label\n1.2.3,1\n", "lacks the column"),
    ("SOPInstanceUID,finding\n1.2.3,yes\n", "row 2"),
    ("SOPInstanceUID,finding\n", "no rows"),
])
def test_bad_labels_csv_is_one_clear_error(tmp_path, small_export, content, fragment):
    labels = tmp_path / "labels.csv"
    labels.write_text(content)
    with pytest.raises(LabelsError, match=fragment):
        ingest(tmp_path / "site", small_export / "dicom", labels, keys=init_keys(tmp_path / "site"))


def test_a_site_with_no_data_says_what_to_do(tmp_path):
    keys = init_keys(tmp_path / "site")
    store = SiteStore.create(tmp_path / "site", keys)
    with pytest.raises(NoSiteData, match="fedrad-site ingest"):
        load_site_data(store, 32)


def test_the_whole_pydicom_corpus_is_ingested_quarantined_or_rejected(tmp_path):
    files = [Path(p) for p in get_testdata_files() if Path(p).is_file()]
    assert len(files) > 200, "install the pydicom-data package for the full corpus"
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["SOPInstanceUID", "finding"])
        seen = set()
        for path in files:
            try:
                uid = str(pydicom.dcmread(path, stop_before_pixels=True, force=True).get("SOPInstanceUID", "") or "")
            except Exception:  # noqa: BLE001 - unreadable files have no label, ingest rejects them
                continue
            if uid and uid not in seen:
                seen.add(uid)
                writer.writerow([uid, len(seen) % 2])
    corpus = tmp_path / "corpus"
    for index, path in enumerate(files):
        target = corpus / f"{index:03d}" / path.name
        target.parent.mkdir(parents=True)
        shutil.copy(path, target)
    keys = init_keys(tmp_path / "site")
    summary = ingest(tmp_path / "site", corpus, labels, keys=keys, tensor_size=32, workers=2)
    print("corpus ingest:", summary.to_dict())
    outcomes = summary.ingested + sum(summary.quarantined.values()) + sum(summary.rejected.values())
    assert outcomes + summary.already_in_store == len(files)
    assert summary.ingested > 30
    assert summary.quarantined["ultrasound"] > 0
    assert {"not-dicom", "no-pixel-data", "corrupt"} <= set(summary.rejected)
    assert all(reason.replace("-", "").isalpha() for reason in summary.rejected)

    # one process stores exactly what the workers stored: same outcomes, same bytes
    shutil.copytree(tmp_path / "site" / "keys", tmp_path / "one-process" / "keys")
    alone = ingest(tmp_path / "one-process", corpus, labels, keys=load_keys(tmp_path / "one-process"),
                   tensor_size=32, workers=1)
    assert {**alone.to_dict(), "seconds": 0} == {**summary.to_dict(), "seconds": 0}
    assert _stored(tmp_path / "one-process", keys) == _stored(tmp_path / "site", keys)


def _stored(site_dir: Path, keys) -> list[tuple]:
    """Every stored image, in ingest order, without its random image id."""
    store = SiteStore.open(site_dir, keys)
    return [(r.patient_key, r.label, dict(r.meta), hashlib.sha256(store.read_dicom(r.image_id)).hexdigest(),
             store.read_tensor(r.image_id).tobytes()) for r in store.records()]


def test_a_crashing_worker_stops_the_ingest_with_what_came_before_committed(tmp_path, small_export, monkeypatch):
    files = sorted((small_export / "dicom").rglob("*.dcm"))
    victim = files[len(files) // 2].read_bytes()
    real_dcmread = pydicom.dcmread

    def crashing_dcmread(source, *args, **kwargs):  # a decoder that crashes its process on one file
        if hasattr(source, "getvalue") and source.getvalue() == victim:
            os._exit(70)
        return real_dcmread(source, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", crashing_dcmread)  # forked workers inherit it
    keys = init_keys(tmp_path / "site")
    with pytest.raises(WorkerDied, match="run the ingest again to resume"):
        ingest(tmp_path / "site", small_export / "dicom", small_export / "labels.csv", keys=keys, workers=2)
    store = SiteStore.open(tmp_path / "site", keys)
    kept = len(store.records())
    assert kept < len(files) // 2 + 1 and store.verify() == []  # committed whole, no orphan

    monkeypatch.setattr(pydicom, "dcmread", real_dcmread)
    again = ingest(tmp_path / "site", small_export / "dicom", small_export / "labels.csv", keys=keys, workers=2)
    assert (again.already_in_store, again.ingested) == (kept, len(files) - kept)
    assert len(SiteStore.open(tmp_path / "site", keys).records()) == len(files)
