"""Deidentifier behaviour: no input mutation, options, marking, keys, configuration errors."""
from __future__ import annotations

import copy
import warnings
import re

import pydicom
import pytest
from pydicom.dataset import Dataset

from client.deid import DeidConfigError, DeidOptions, Deidentifier, PixelCleanRule, QuarantineReason
from client.deid.marking import method_codes

from .helpers import OTHER_SECRET, SECRET, read_bytes, real, synthetic_dx, to_bytes


@pytest.mark.parametrize("name", ["CT_small.dcm", "US1_UNCR.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm"])
def test_input_is_not_mutated(name):
    ds = real(name)
    ds.BurnedInAnnotation = "YES"
    rule_args = dict(manufacturer=str(ds.Manufacturer), model=str(ds.ManufacturerModelName),
                     rows=ds.Rows, columns=ds.Columns, regions=((0, 0, 8, 8),))
    deid = Deidentifier(
        site_secret=SECRET,
        options=DeidOptions(retain_longitudinal_modified_dates=True, clean_descriptors=True),
        pixel_clean_rules=(PixelCleanRule(**rule_args),),
    )
    snapshot = copy.deepcopy(ds)
    before = to_bytes(ds)
    preamble, meta = ds.preamble, copy.deepcopy(ds.file_meta)
    result = deid(ds)
    assert result.admissible
    assert to_bytes(ds) == before
    assert ds == snapshot and ds.preamble == preamble and ds.file_meta == meta
    assert result.dataset is not ds and result.dataset.file_meta is not ds.file_meta


def test_synthetic_input_with_nested_sequences_is_not_mutated(deid):
    ds = synthetic_dx()
    before = to_bytes(ds)
    deid(ds)
    assert to_bytes(ds) == before


def test_marking_default(deid):
    out = deid(real("CT_small.dcm")).dataset
    assert out.PatientIdentityRemoved == "YES"
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100"]
    item = out.DeidentificationMethodCodeSequence[0]
    assert item.CodingSchemeDesignator == "DCM"
    assert item.CodeMeaning == "Basic Application Confidentiality Profile"
    assert "2023b" in out.DeidentificationMethod[0]
    assert out.LongitudinalTemporalInformationModified == "REMOVED"


def test_marking_names_every_option():
    options = DeidOptions(
        retain_longitudinal_modified_dates=True, retain_patient_characteristics=True,
        clean_descriptors=True, retain_safe_private=frozenset({("GEMS_IDEN_01", 0x01)}),
    )
    out = Deidentifier(site_secret=SECRET, options=options)(real("CT_small.dcm")).dataset
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113105", "113107", "113108", "113111"]
    assert all(len(v) <= 64 for v in out.DeidentificationMethod)
    assert "Retain Safe Private Option" in out.DeidentificationMethod
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert method_codes(DeidOptions(), pixels_cleaned=True)[1][0] == "113101"


def test_patient_characteristics_option():
    ds = real("CT_small.dcm")
    ds.PatientAge, ds.PatientSex, ds.PatientWeight, ds.PatientSize = "045Y", "F", "70", "1.7"
    default = Deidentifier(site_secret=SECRET)(ds).dataset
    kept = Deidentifier(site_secret=SECRET, options=DeidOptions(retain_patient_characteristics=True))(ds).dataset
    assert "PatientAge" not in default and default.PatientSex == "" and "PatientWeight" not in default
    assert (kept.PatientAge, kept.PatientSex, kept.PatientWeight, kept.PatientSize) == ("045Y", "F", 70, 1.7)


def test_clean_descriptors_keeps_only_safe_text():
    ds = synthetic_dx()
    ds.StudyDescription = "CHEST PA"
    ds.SeriesDescription = "PA view for Quincy"  # a patient name token
    ds.ProtocolName = "Chest 2023-01-15"  # the study date, other punctuation
    ds.ImageComments = "ref 99887766"  # a long digit run
    ds.PerformedProcedureStepDescription = "CHEST  TWO VIEWS"
    deid = Deidentifier(site_secret=SECRET, options=DeidOptions(clean_descriptors=True))
    out = deid(ds).dataset
    assert out.StudyDescription == "CHEST PA"
    assert out.PerformedProcedureStepDescription == "CHEST  TWO VIEWS"
    assert "SeriesDescription" not in out  # failed clean -> Basic Profile X
    assert out.ProtocolName == "ANONYMIZED"  # failed clean -> Basic Profile X/D -> D
    assert "ImageComments" not in out


def test_safe_private_allowlist_keeps_only_listed_elements():
    ds = synthetic_dx()
    options = DeidOptions(retain_safe_private=frozenset({("ACME 1.0", 0x02)}))
    out = Deidentifier(site_secret=SECRET, options=options)(ds).dataset
    private = sorted(int(t) for t in out.keys() if t.is_private)
    assert private == [0x00090010, 0x00091002]
    assert out[0x00090010].value == "ACME 1.0" and out[0x00091002].value == 3.5


def test_patient_key_is_keyed_opaque_and_never_in_the_output(deid):
    ds = real("CT_small.dcm")
    result = deid(ds)
    assert re.fullmatch(r"[0-9a-f]{64}", result.patient_key)
    assert result.patient_key == Deidentifier(site_secret=SECRET)(real("CT_small.dcm")).patient_key
    assert result.patient_key != Deidentifier(site_secret=OTHER_SECRET)(ds).patient_key
    assert result.patient_key.encode() not in to_bytes(result.dataset)
    assert result.patient_key[:16].encode() not in to_bytes(result.dataset)


def test_patient_key_fallback_without_patient_id(deid):
    ds = real("CT_small.dcm")
    no_id = copy.deepcopy(ds)
    del no_id.PatientID
    other_name = copy.deepcopy(no_id)
    other_name.PatientName = "Other^Person"
    assert deid(no_id).patient_key != deid(ds).patient_key
    assert deid(no_id).patient_key != deid(other_name).patient_key
    assert deid(no_id).patient_key == deid(copy.deepcopy(no_id)).patient_key


def test_dataset_without_file_meta_gets_one(deid):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.PatientName = "Plain^Dataset"
    out = deid(ds).dataset
    assert out.file_meta.MediaStorageSOPInstanceUID == deid.map_uid("1.2.3.4.5")
    assert to_bytes(out)[:128] == b"\x00" * 128


def test_unprocessable_input_is_quarantined_not_raised(deid, caplog):
    result = deid("not a dataset")  # type: ignore[arg-type]
    assert result.dataset is None and result.quarantine is QuarantineReason.DEID_FAILED
    assert not result.admissible


@pytest.mark.parametrize("secret", [b"", b"short", "a text secret of enough length"])
def test_weak_or_mistyped_secret_is_rejected(secret):
    with pytest.raises(DeidConfigError, match="site_secret must be bytes") as info:
        Deidentifier(site_secret=secret)
    text = secret.decode() if isinstance(secret, bytes) else secret
    assert not text or text not in str(info.value)  # the error never echoes the secret


def test_invalid_options_are_collected_into_one_error():
    with pytest.raises(DeidConfigError) as info:
        DeidOptions(clean_descriptors="yes", retain_safe_private=frozenset({("ACME", 300)}))  # type: ignore[arg-type]
    assert "clean_descriptors" in str(info.value) and "retain_safe_private" in str(info.value)


@pytest.mark.parametrize("options", [DeidOptions(), DeidOptions(retain_longitudinal_modified_dates=True,
                                                                  clean_descriptors=True,
                                                                  retain_patient_characteristics=True)])
def test_one_deidentifier_over_many_files_gives_what_a_fresh_one_gives_each(corpus, options):
    """The walks' operations are cached per de-identifier: the cache must not carry anything
    from one file (or one sequence's mode) to the next."""
    readable, _ = corpus
    shared = Deidentifier(site_secret=SECRET, options=options)
    compared = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in readable:
            reused = shared(pydicom.dcmread(path), in_place=True)
            fresh = Deidentifier(site_secret=SECRET, options=options)(pydicom.dcmread(path), in_place=True)
            assert reused.quarantine == fresh.quarantine, path
            if reused.dataset is not None and fresh.dataset is not None:
                assert to_bytes(reused.dataset) == to_bytes(fresh.dataset), path
                compared += 1
    assert compared > 100


def test_an_element_kept_at_the_top_gets_a_dummy_in_a_dummied_sequence_of_a_later_file():
    shared = Deidentifier(site_secret=SECRET)

    def deidentified(in_sequence: bool) -> Dataset:
        ds = synthetic_dx()
        if in_sequence:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator = "I-1", "99LOCAL"
            item.CodeMeaning = "St Elsewhere Hospital"
            ds.InstitutionCodeSequence = [item]  # D in the table: its items' text gets dummies
        else:
            ds.CodeMeaning = "Chest"  # not in the table: kept
        return shared(read_bytes(to_bytes(ds)), in_place=True).dataset

    assert deidentified(False).CodeMeaning == "Chest"
    assert deidentified(True).InstitutionCodeSequence[0].CodeMeaning != "St Elsewhere Hospital"
