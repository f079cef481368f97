"""Raw elements: the decode check of kept ones (skipped only where pydicom cannot fail), the
bytes of remapped UIDs."""
from __future__ import annotations

import logging
import random
import warnings

import pydicom
import pytest
from pydicom import config
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.datadict import dictionary_VR
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue

from client.deid.raw import NUMBER_SIZES, TEXT_VRS, decodes, remapped_uid_bytes
from client.deid.uids import UidMapper

# One standard tag per text VR (pydicom decodes by the VR held in the raw element).
_TAGS = {"AE": 0x00080054, "AS": 0x00101010, "CS": 0x00080060, "DA": 0x00080020, "DT": 0x0008002A,
         "TM": 0x00080030, "UR": 0x00080120, "LO": 0x00080070, "LT": 0x00204000, "SH": 0x00080050,
         "ST": 0x00080081, "UC": 0x00080119, "UT": 0x0008030E, "UI": 0x00080018, "PN": 0x00100010,
         "DS": 0x00101020, "IS": 0x00081160}
_NUMBER_TAGS = {"US": 0x00280010, "SS": 0x00189219, "UL": 0x00081161, "SL": 0x00186020, "FL": 0x00089459,
                "FD": 0x00081163, "SV": 0x00720082, "UV": 0x0008040C}


def _raw(tag: int, vr: str, value: bytes) -> RawDataElement:
    return RawDataElement(pydicom.tag.Tag(tag), vr, len(value), value, 0, False, True)


def test_every_checked_vr_has_a_tag_of_that_vr():
    assert set(_TAGS) == TEXT_VRS and set(_NUMBER_TAGS) == set(NUMBER_SIZES)
    assert all(dictionary_VR(tag) == vr for vr, tag in {**_TAGS, **_NUMBER_TAGS}.items())


@pytest.mark.parametrize("charset", [["iso8859"], ["utf8"], ["iso8859", "iso2022_jp"], ["gb18030"]])
def test_pydicom_decodes_any_bytes_of_a_text_vr(charset):
    rng = random.Random(7)
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for vr, tag in _TAGS.items():
                for trial in range(200):
                    size = rng.choice([1, 2, 3, 8, 17, 64])
                    value = (bytes(rng.randrange(256) for _ in range(size)) if trial % 2 else
                             bytes(rng.choice(b"0123456789.-+^=\\ ABCxyz\x1b$B(") for _ in range(size)))
                    convert_raw_data_element(_raw(tag, vr, value), encoding=charset, ds=pydicom.Dataset())
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("vr", sorted(NUMBER_SIZES))
def test_binary_numbers_decode_exactly_when_their_length_fits(vr):
    ds = pydicom.Dataset()
    for size in range(0, 25):
        raw = _raw(_NUMBER_TAGS[vr], vr, bytes(range(size)))
        try:
            convert_raw_data_element(raw, encoding=["iso8859"], ds=ds)
            pydicom_decodes = True
        except Exception:
            pydicom_decodes = False
        assert decodes(ds, raw, vr) is pydicom_decodes, (vr, size)


def test_text_is_checked_when_pydicom_raises_on_invalid_values(monkeypatch):
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.RAISE)
    ds = pydicom.Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.set_original_encoding(False, True, ds._character_set)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not decodes(ds, _raw(0x00080070, "LO", b"\xff\xfe"), "LO")
        assert decodes(ds, _raw(0x00080070, "LO", b"ACME"), "LO")


@pytest.mark.parametrize("value", [b"1.2.3.4\x00", b"1.2.3.4", b"1.2.3\\4.5.6 ", b"1.2.3\\\\4.5\x00",
                                   b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.5.1.4.1.1.2\\9.8.7", b"\\",
                                   b"  ", b"\x00\x00", b"", b"1.2.\xe93\x00", b"not a uid "])
def test_remapped_uid_bytes_are_what_pydicom_writes_after_decoding_and_remapping(value):
    remap = UidMapper(b"s" * 32)
    raw = _raw(0x00080018, "UI", value)
    decoded = convert_raw_data_element(raw, encoding=["iso8859"], ds=pydicom.Dataset())
    values = [] if decoded.value in (None, "") else \
        list(decoded.value) if isinstance(decoded.value, MultiValue) else [decoded.value]
    if values:
        mapped = [remap(str(v)) for v in values]
        decoded.value = mapped[0] if len(mapped) == 1 else mapped
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = True, True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_data_element(fp, decoded)
    assert remapped_uid_bytes(value, remap) == fp.getvalue()[8:]
