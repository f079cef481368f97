"""Synthetic hospitals: real DICOM files, complete fake identities, determinism, labels."""
from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest

from common.synth import HELD_OUT_SITE_INDEX, HospitalSummary, write_hospital, write_hospitals
from common.synth import phantom
from common.synth.profiles import sample_profile

IDENTIFYING = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "AccessionNumber",
    "InstitutionName", "InstitutionAddress", "ReferringPhysicianName", "OperatorsName", "StationName",
    "DeviceSerialNumber", "StudyDate", "StudyTime", "SeriesDate", "SeriesTime", "AcquisitionDate",
    "AcquisitionTime", "ContentDate", "ContentTime", "StudyID", "OtherPatientIDs",
    "OtherPatientIDsSequence", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
    "FrameOfReferenceUID",
)
SOP_CLASSES = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}


def _files(site: Path) -> list[Path]:
    return sorted((site / "dicom").rglob("*.dcm"))


def _labels(site: Path) -> dict[str, int]:
    with open(site / "labels.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["SOPInstanceUID", "finding"]
    return {uid: int(label) for uid, label in rows[1:]}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[HospitalSummary, list[pydicom.Dataset]]:
    out = tmp_path_factory.mktemp("synth") / "site"
    summary = write_hospital(out, site_index=0, seed=0, patients=24)
    return summary, [pydicom.dcmread(path) for path in _files(out)]


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    first = write_hospital(tmp_path / "a", site_index=1, seed=7, patients=3)
    second = write_hospital(tmp_path / "b", site_index=1, seed=7, patients=3)
    other = write_hospital(tmp_path / "c", site_index=1, seed=8, patients=3)
    names = [p.relative_to(first.out_dir) for p in _files(first.out_dir)]
    assert names == [p.relative_to(second.out_dir) for p in _files(second.out_dir)]
    for name in names:
        assert (first.out_dir / name).read_bytes() == (second.out_dir / name).read_bytes()
    assert (first.out_dir / "labels.csv").read_bytes() == (second.out_dir / "labels.csv").read_bytes()
    assert set(_labels(first.out_dir)).isdisjoint(_labels(other.out_dir))
    theirs = {p.relative_to(other.out_dir): p.read_bytes() for p in _files(other.out_dir)}
    assert all(theirs.get(name) != (first.out_dir / name).read_bytes() for name in names)


def test_every_identifying_attribute_is_present_and_filled(site):
    _, datasets = site
    for ds in datasets:
        missing = [k for k in IDENTIFYING if k not in ds or ds.data_element(k).is_empty]
        assert not missing, missing
        assert ds.OtherPatientIDsSequence[0].PatientID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == SOP_CLASSES[ds.Modality] == ds.file_meta.MediaStorageSOPClassUID
        assert ds.BodyPartExamined == "CHEST" and ds.ViewPosition in ("PA", "AP")
        assert ds.BurnedInAnnotation == "NO"
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID):
            assert re.fullmatch(r"2\.25\.[1-9][0-9]*", uid) and len(uid) <= 64
        if ds.Modality == "DX":
            assert ds.ImagerPixelSpacing


def test_vendor_private_block_holds_identifying_values(site):
    _, datasets = site
    for ds in datasets:
        creators = [e for e in ds if e.tag.group == 0x0029 and e.tag.element == 0x0010]
        assert len(creators) == 1 and creators[0].value
        block = ds.private_block(0x0029, creators[0].value)
        assert block[0x10].value == str(ds.PatientName)
        assert block[0x11].value


def test_pixels_decode_with_the_declared_shape_and_bit_depth(site):
    _, datasets = site
    for ds in datasets:
        pixels = ds.pixel_array
        assert pixels.shape == (ds.Rows, ds.Columns) and pixels.dtype == np.uint16
        assert ds.BitsAllocated == 16 and ds.PixelRepresentation == 0 and ds.HighBit == ds.BitsStored - 1
        assert ds.BitsStored in (10, 12, 14, 16)
        assert int(pixels.max()) < 2**ds.BitsStored
        assert 320 <= ds.Rows <= 640 and 320 <= ds.Columns <= 640
        assert ds.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2")
        assert pixels.std() > 0.05 * (int(pixels.max()) - int(pixels.min()))


def test_window_shows_the_chest(site):
    """The default window spans the thorax: lungs and mediastinum fall inside it, not clipped."""
    _, datasets = site
    for ds in datasets:
        values = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        low = float(ds.WindowCenter) - float(ds.WindowWidth) / 2
        high = float(ds.WindowCenter) + float(ds.WindowWidth) / 2
        rows, cols = values.shape
        centre = values[rows // 4 : 3 * rows // 4, cols // 4 : 3 * cols // 4]
        inside = np.mean((centre > low) & (centre < high))
        assert inside > 0.8, inside


def test_labels_csv_lists_every_file_once(site):
    summary, datasets = site
    labels = _labels(summary.out_dir)
    assert sorted(labels) == sorted(ds.SOPInstanceUID for ds in datasets)
    assert summary.images == len(datasets) == len(labels)
    assert summary.positives == sum(labels.values())
    assert set(labels.values()) == {0, 1}  # both classes present


def test_file_names_carry_no_identifying_data(site):
    summary, datasets = site
    for path, ds in zip(_files(summary.out_dir), datasets):
        relative = path.relative_to(summary.out_dir).as_posix()
        assert re.fullmatch(r"dicom/STUDY\d{4}/IMG\d{5}\.dcm", relative)
        assert ds.PatientID not in relative and ds.AccessionNumber not in relative


def test_follow_up_studies_share_the_patient_and_differ_in_date(site):
    summary, datasets = site
    by_patient = defaultdict(list)
    for ds in datasets:
        by_patient[ds.PatientID].append(ds)
    assert len(by_patient) == summary.patients
    repeated = [group for group in by_patient.values() if len(group) > 1]
    assert repeated
    assert max(len(group) for group in by_patient.values()) <= 3
    for group in repeated:
        assert len({ds.StudyInstanceUID for ds in group}) == len(group)
        assert len({ds.StudyDate for ds in group}) == len(group)
        assert len({(str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex) for ds in group}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)


def test_sites_differ_like_hospitals_do(tmp_path):
    summaries = write_hospitals(tmp_path, sites=6, seed=0, patients=1)
    assert [s.out_dir.name for s in summaries] == [f"site-{i:03d}" for i in range(6)]
    looks = []
    for summary in summaries:
        ds = pydicom.dcmread(_files(summary.out_dir)[0])
        looks.append((ds.Manufacturer, ds.PhotometricInterpretation, ds.BitsStored, ds.Rows, ds.Columns))
        assert ds.InstitutionName
        assert _displayed_lung_is_darker_than_mediastinum(ds)
    assert len(set(looks)) == 6
    assert len({look[0] for look in looks}) >= 2
    assert {look[1] for look in looks} == {"MONOCHROME1", "MONOCHROME2"}
    prevalences = {round(sample_profile(seed=0, site_index=i).prevalence, 3) for i in range(6)}
    assert len(prevalences) == 6 and all(0.2 <= p <= 0.5 for p in prevalences)


def _displayed_lung_is_darker_than_mediastinum(ds: pydicom.Dataset) -> bool:
    """Rescale, window, then invert MONOCHROME1: the chest must read like a radiograph."""
    values = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    shown = np.clip((values - float(ds.WindowCenter)) / float(ds.WindowWidth) + 0.5, 0.0, 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        shown = 1.0 - shown
    rows, cols = shown.shape
    band = slice(int(0.40 * rows), int(0.55 * rows))
    right_lung = np.median(shown[band, int(0.27 * cols) : int(0.35 * cols)])
    left_lung = np.median(shown[band, int(0.65 * cols) : int(0.73 * cols)])
    mediastinum = np.median(shown[int(0.30 * rows) : int(0.45 * rows), int(0.48 * cols) : int(0.52 * cols)])
    return max(right_lung, left_lung) + 0.2 < mediastinum


def test_default_patient_count_and_held_out_site(tmp_path):
    assert HELD_OUT_SITE_INDEX >= 1000
    assert 60 <= sample_profile(seed=0, site_index=HELD_OUT_SITE_INDEX).default_patients <= 120
    summary = write_hospital(tmp_path / "held-out", site_index=HELD_OUT_SITE_INDEX, patients=1)
    assert summary.site_index == HELD_OUT_SITE_INDEX and summary.images >= 1


def test_a_site_is_never_half_written(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "something").write_text("x")
    with pytest.raises(FileExistsError):
        write_hospital(tmp_path / "taken", site_index=0, patients=1)
    with pytest.raises(ValueError):
        write_hospital(tmp_path / "bad", site_index=0, patients=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    write_hospital(tmp_path / "ok", site_index=0, patients=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok", "taken"]


def test_a_finding_raises_attenuation_only_inside_the_lung():
    rng = np.random.default_rng(0)
    anatomy = phantom.sample_anatomy(rng, female=False, age=60)
    exposure = phantom.Exposure(0.0, 70.0, 0.0, 0.0, False)
    nodule = phantom.Finding("nodule", 0.5, 0.45, 12.0, 0.1, 1)
    kwargs = dict(shape=(200, 200), spacing_mm=(2.0, 2.0), field_width_mm=400.0)
    plain = phantom.render_chest(anatomy, exposure, (), **kwargs)
    sick = phantom.render_chest(anatomy, exposure, (nodule,), **kwargs)
    diff = sick - plain
    row = int((70.0 + 0.45 * anatomy.lung_height_mm) / 2.0)
    col = int((200.0 + 0.5 * anatomy.half_width_mm) / 2.0)
    assert diff[row, col] > 0.08
    assert np.count_nonzero(diff > 1e-4) < np.pi * (12.0 * 1.3 / 2.0) ** 2
    assert 0.0 <= plain.min() and plain.max() <= 1.0
    assert plain[row, col] < plain[row, 100]  # lung darker than the mediastinum
