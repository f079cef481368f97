"""Burned-in text risk from the header; site pixel-clean rules blank and un-quarantine."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from client.deid import DeidConfigError, Deidentifier, PixelCleanRule, QuarantineReason

from .helpers import SECRET, read_bytes, real, synthetic_dx, to_bytes

TOP_BANNER = (0, 0, 40, 640)


def _rule(ds, *regions) -> PixelCleanRule:
    return PixelCleanRule(
        manufacturer=str(ds.Manufacturer), model=str(ds.ManufacturerModelName),
        rows=int(ds.Rows), columns=int(ds.Columns), regions=tuple(regions),
    )


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("US1_UNCR.dcm", "ultrasound"),
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", "ultrasound"),  # says BurnedInAnnotation NO: still US
        ("SC_rgb.dcm", "secondary-capture"),
        ("JPEG2000.dcm", "secondary-capture"),  # NM with ConversionType WSD
    ],
)
def test_risky_corpus_files_are_quarantined(deid, name, reason):
    result = deid(real(name))
    assert result.quarantine == reason
    assert not result.admissible
    assert result.dataset is not None and result.dataset.PatientIdentityRemoved == "YES"


def test_burned_in_annotation_yes_is_quarantined(deid):
    ds = real("CT_small.dcm")
    ds.BurnedInAnnotation = "YES"
    assert deid(ds).quarantine is QuarantineReason.BURNED_IN_ANNOTATION


def test_chest_radiographs_with_laterality_markers_pass(deid):
    assert deid(synthetic_dx(burned_in="NO")).admissible
    assert deid(real("RG1_UNCR.dcm")).admissible  # CR, no BurnedInAnnotation at all
    assert deid(real("CT_small.dcm")).admissible


def test_recognizable_features_are_never_lifted_by_a_rule():
    ds = real("CT_small.dcm")
    ds.RecognizableVisualFeatures = "YES"
    deid = Deidentifier(site_secret=SECRET, pixel_clean_rules=(_rule(ds, (0, 0, 10, 10)),))
    assert deid(ds).quarantine == "recognizable-features"


def test_rule_blanks_uncompressed_pixels_and_unquarantines():
    original = real("US1_UNCR.dcm")
    before = original.pixel_array.copy()
    deid = Deidentifier(site_secret=SECRET, pixel_clean_rules=(_rule(original, TOP_BANNER),))
    result = deid(original)
    assert result.admissible
    out = read_bytes(to_bytes(result.dataset))
    after = out.pixel_array
    assert out.BurnedInAnnotation == "NO"
    assert not after[:40].any()
    assert np.array_equal(after[40:], before[40:])
    assert before[:40].any(), "the region must have held something to blank"
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert "113101" in codes  # Clean Pixel Data Option


def test_rule_decodes_compressed_pixels_and_stores_them_uncompressed():
    original = real("JPGLosslessP14SV1_1s_1f_8b.dcm")
    before = original.pixel_array.copy()
    region = (0, 0, 60, 1024)
    deid = Deidentifier(site_secret=SECRET, pixel_clean_rules=(_rule(original, region),))
    result = deid(original)
    assert result.admissible
    out = read_bytes(to_bytes(result.dataset))
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert not out.pixel_array[:60].any() and before[:60].any()
    assert np.array_equal(out.pixel_array[60:], before[60:])
    assert original.file_meta.TransferSyntaxUID.is_compressed  # input untouched


def test_rule_blanks_every_frame():
    original = real("OBXXXX1A_2frame.dcm")
    deid = Deidentifier(site_secret=SECRET, pixel_clean_rules=(_rule(original, (0, 0, 50, 800)),))
    result = deid(original)
    assert result.admissible
    frames = read_bytes(to_bytes(result.dataset)).pixel_array
    assert frames.shape[0] == 2 and not frames[:, :50].any()


def test_non_matching_rule_keeps_the_quarantine():
    original = real("US1_UNCR.dcm")
    rule = PixelCleanRule(manufacturer="G.E. Medical Systems", model="LOGIQ 9", rows=480, columns=640,
                          regions=(TOP_BANNER,))
    assert Deidentifier(site_secret=SECRET, pixel_clean_rules=(rule,))(original).quarantine == "ultrasound"


def test_failed_clean_quarantines_without_logging_values(caplog):
    ds = real("CT_small.dcm")
    ds.BurnedInAnnotation = "YES"
    ds.PixelData = ds.PixelData[:100]  # truncated: cannot be decoded
    deid = Deidentifier(site_secret=SECRET, pixel_clean_rules=(_rule(ds, (0, 0, 10, 10)),))
    with caplog.at_level(logging.DEBUG):
        result = deid(ds)
    assert result.quarantine == "pixel-clean-failed"
    assert not result.admissible
    assert "CompressedSamples" not in caplog.text and str(ds.PatientID) not in caplog.text


@pytest.mark.parametrize(
    "regions", [(), ((0, 0, 0, 10),), ((0, 0, 10, 700),), ((5, 5, 2, 9),), ((0, 0, 1),)]
)
def test_rule_validation_names_the_rule(regions):
    with pytest.raises(DeidConfigError, match="PixelCleanRule"):
        PixelCleanRule(manufacturer="M", model="X", rows=480, columns=640, regions=regions)
