"""Keyed UID remapping: referential integrity, per-site consistency, validity."""
from __future__ import annotations

import re
import warnings

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from client.deid import Deidentifier

from .helpers import OTHER_SECRET, SECRET, real

UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(uid: str) -> bool:
    """A syntactically valid DICOM UID of at most 64 characters."""
    return 0 < len(uid) <= 64 and bool(UID_PATTERN.match(uid))


def _read_all(paths):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [pydicom.dcmread(p) for p in paths]


def _ui_values(ds: Dataset):
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _ui_values(item)
        elif elem.VR == "UI" and elem.value:
            yield from (elem.value if isinstance(elem.value, list) else [elem.value])


def test_study_and_dicomdir_references_stay_consistent(dicomdir_root):
    """A real multi-study patient folder plus its DICOMDIR, de-identified file by file."""
    deid = Deidentifier(site_secret=SECRET)
    paths = sorted(p for p in (dicomdir_root / "77654033").rglob("*") if p.is_file())
    originals = _read_all(paths)
    results = [deid(ds).dataset for ds in originals]
    by_study: dict[str, set[str]] = {}
    new_sop = {}
    for path, original, out in zip(paths, originals, results):
        by_study.setdefault(original.StudyInstanceUID, set()).add(out.StudyInstanceUID)
        assert out.SeriesInstanceUID == deid.map_uid(original.SeriesInstanceUID)
        if "FrameOfReferenceUID" in original:
            assert out.FrameOfReferenceUID == deid.map_uid(original.FrameOfReferenceUID)
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        new_sop[path.relative_to(dicomdir_root).as_posix()] = out.SOPInstanceUID
    assert len(by_study) == 2 and all(len(v) == 1 for v in by_study.values())
    assert len(set().union(*by_study.values())) == 2

    dicomdir = deid(_read_all([dicomdir_root / "DICOMDIR"])[0]).dataset
    matched = 0
    for record in dicomdir.DirectoryRecordSequence:
        if "ReferencedFileID" in record and record.ReferencedFileID[0] == "77654033":
            file_id = "/".join(record.ReferencedFileID)
            assert record.ReferencedSOPInstanceUIDInFile == new_sop[file_id]
            assert record.ReferencedSOPClassUIDInFile.startswith("1.2.840.10008.")
            matched += 1
        assert record.get("PatientName", "") == "" and record.get("PatientID", "") == ""
    assert matched == len(paths)


def test_reference_in_a_sequence_maps_to_the_referenced_instance():
    deid = Deidentifier(site_secret=SECRET)
    target = real("CT_small.dcm")
    referring = real("MR_small.dcm")
    item = Dataset()
    item.ReferencedSOPClassUID = target.SOPClassUID
    item.ReferencedSOPInstanceUID = target.SOPInstanceUID
    referring.SourceImageSequence = Sequence([item])
    new_target = deid(target).dataset
    new_ref = deid(referring).dataset.SourceImageSequence[0]
    assert new_ref.ReferencedSOPInstanceUID == new_target.SOPInstanceUID
    assert new_ref.ReferencedSOPClassUID == target.SOPClassUID  # registry UID kept


def test_same_secret_same_map_other_secret_other_map():
    ds = real("CT_small.dcm")
    first = Deidentifier(site_secret=SECRET)(ds).dataset
    again = Deidentifier(site_secret=SECRET)(ds).dataset  # e.g. a later ingest
    other = Deidentifier(site_secret=OTHER_SECRET)(ds).dataset
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert first[keyword].value == again[keyword].value
        assert first[keyword].value != other[keyword].value
        assert first[keyword].value != ds[keyword].value


def test_well_known_uids_are_kept(deid):
    ds = real("CT_small.dcm")
    out = deid(ds).dataset
    assert out.SOPClassUID == ds.SOPClassUID
    assert out.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert deid.map_uid("1.2.840.10008.1.2.1") == "1.2.840.10008.1.2.1"


@pytest.mark.parametrize("name", ["CT_small.dcm", "rtplan.dcm", "MR_small.dcm", "JPEG2000.dcm"])
def test_every_output_uid_is_valid_and_new(deid, name):
    original = real(name)
    before = set(_ui_values(original)) | set(_ui_values(original.file_meta))
    out = deid(original).dataset
    after = set(_ui_values(out)) | set(_ui_values(out.file_meta))
    assert after
    assert all(is_valid_uid(uid) for uid in after), "invalid UID in output"
    kept = {uid for uid in after & before if not uid.startswith("1.2.840.10008.")}
    assert kept <= {"2.16.840.1.113883.6.96"}  # only a coding scheme UID may stay


def test_mapping_shape(deid):
    mapped = {deid.map_uid(f"1.2.3.{i}") for i in range(2000)}
    assert len(mapped) == 2000
    assert all(m.startswith("2.25.") and len(m) <= 44 and UID_PATTERN.match(m) for m in mapped)
    assert deid.map_uid("1.2.3.4 ") == deid.map_uid("1.2.3.4")  # padding is not identity
