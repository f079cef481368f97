"""Retain Longitudinal Temporal Information with Modified Dates: one keyed shift per patient."""
from __future__ import annotations

import datetime as dt
import warnings

import pydicom
import pytest

from client.deid import DeidOptions, Deidentifier
from client.deid.dates import shift_da, shift_dt
from client.deid.patient import MAX_SHIFT_DAYS

from .helpers import OTHER_SECRET, SECRET, real

SHIFTING = DeidOptions(retain_longitudinal_modified_dates=True)


def _day(text: str) -> dt.date:
    return dt.datetime.strptime(text, "%Y%m%d").date()


def _patient_files(dicomdir_root, *folders):
    paths = sorted(p for folder in folders for p in (dicomdir_root / folder).rglob("*") if p.is_file())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [pydicom.dcmread(p) for p in paths]


def test_one_shift_per_patient_across_studies(dicomdir_root):
    originals = _patient_files(dicomdir_root, "98892001", "98892003")  # one patient, CT 2001 + MR 2003
    assert len({ds.PatientID for ds in originals}) == 1 and len({ds.StudyDate for ds in originals}) == 2
    results = [Deidentifier(site_secret=SECRET, options=SHIFTING)(ds) for ds in originals]
    shifts = {r.date_shift_days for r in results}
    assert len(shifts) == 1
    shift = shifts.pop()
    assert -MAX_SHIFT_DAYS <= shift <= -1
    assert len({r.patient_key for r in results}) == 1
    for original, result in zip(originals, results):
        out = result.dataset
        assert _day(out.StudyDate) - _day(original.StudyDate) == dt.timedelta(days=shift)
        if "ContentDate" in original:
            assert _day(out.ContentDate) - _day(original.ContentDate) == dt.timedelta(days=shift)
        if "StudyTime" in original:
            assert out.StudyTime == original.StudyTime  # whole-day shift keeps the time of day
        assert out.LongitudinalTemporalInformationModified == "MODIFIED"
        assert "113107" in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
        assert out.get("PatientBirthDate", "") == ""  # never shifted, always emptied
    # intervals between studies are preserved
    pairs = sorted({(o.StudyDate, r.dataset.StudyDate) for o, r in zip(originals, results)})
    (a0, a1), (b0, b1) = pairs
    assert _day(b0) - _day(a0) == _day(b1) - _day(a1)


def test_shift_is_stable_per_site_and_differs_between_patients_and_sites(dicomdir_root):
    one = _patient_files(dicomdir_root, "98892001")[0]
    other = _patient_files(dicomdir_root, "77654033")[0]
    site_a = Deidentifier(site_secret=SECRET, options=SHIFTING)
    again = Deidentifier(site_secret=SECRET, options=SHIFTING)  # a later ingest
    site_b = Deidentifier(site_secret=OTHER_SECRET, options=SHIFTING)
    assert site_a(one).date_shift_days == again(one).date_shift_days
    assert site_a(one).date_shift_days != site_a(other).date_shift_days
    assert site_a(one).date_shift_days != site_b(one).date_shift_days
    assert site_a(one).patient_key != site_b(one).patient_key


def test_default_removes_dates(deid):
    original = real("CT_small.dcm")
    result = deid(original)
    out = result.dataset
    assert result.date_shift_days is None
    assert out.StudyDate == ""  # Z
    assert out.ContentDate == "19000101"  # Z/D -> D dummy
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    for elem in out.iterall():
        if elem.VR in ("DA", "DT", "TM") and elem.value:
            assert elem.value in ("19000101", "19000101000000", "000000")


def test_unshiftable_value_falls_back_to_the_profile():
    ds = real("CT_small.dcm")
    ds.AcquisitionDateTime = "2020"  # year precision: no exact shift exists
    ds.add_new(0x00181204, "DA", "20190707")  # DA outside Table E.1-1: shifted too
    out = Deidentifier(site_secret=SECRET, options=SHIFTING)(ds)
    assert out.dataset.AcquisitionDateTime == "19000101000000"  # X/Z/D -> D
    shifted = _day("20190707") + dt.timedelta(days=out.date_shift_days)
    assert out.dataset[0x00181204].value == shifted.strftime("%Y%m%d")


@pytest.mark.parametrize(
    ("value", "days", "expected"),
    [
        ("20200115103000.5+0100", -10, "20200105103000.5+0100"),
        ("20200301", -1, "20200229"),  # date-only DT
        ("2020", -1, None),
        ("202001", -1, None),
    ],
)
def test_shift_dt(value, days, expected):
    assert shift_dt(value, days) == expected


def test_shift_da():
    assert shift_da("20240301", -1) == "20240229"
    assert shift_da("2024.03.01", -1) == "20240229"  # legacy ACR-NEMA form
    assert shift_da("20241340", -1) is None
    assert shift_da("", -1) is None
