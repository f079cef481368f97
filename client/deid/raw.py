"""Elements still in their raw (as read) form: what can be decided without decoding them.

pydicom decodes an element's value on first access, which costs more than most of what
de-identification then does with it. An element that is removed, zeroed or given a dummy
needs only its VR, and a zeroed or dummy one is replaced by a raw element holding the bytes
pydicom would write for the new value (``replaced``); one that is kept is left raw, so it
is written from its own bytes (``encode.py``), after a check that pydicom can decode it
(``decodes``).
"""
from __future__ import annotations

import functools

import pydicom
from pydicom import config
from pydicom.charset import default_encoding
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.hooks import hooks
from pydicom.hooks import raw_element_vr as _PYDICOM_RAW_ELEMENT_VR

from .actions import dummy_value

_CHARACTER_SET = 0x00080005
# The dictionary's ambiguous VRs: binary whichever they resolve to, so kept or removed
# without decoding (a walk that must zero or dummy one decodes it first).
AMBIGUOUS_BINARY_VRS = frozenset({"OB or OW", "US or SS", "US or OW", "US or SS or OW"})


def raw_vr(ds: pydicom.Dataset, raw) -> str | None:
    """The VR pydicom gives ``raw`` when it decodes it, found without decoding the value
    (for an implicit element the dictionary's, which can be an ambiguous binary one such as
    pixel data's "OB or OW"); ``None`` when only decoding can tell (callbacks, deferred
    values) or ``raw`` is already decoded."""
    if not isinstance(raw, RawDataElement) or config.data_element_callback:
        return None
    if raw.value is None and raw.length != 0:
        return None
    if raw.VR is not None and raw.VR != "UN" and hooks.raw_element_vr is _PYDICOM_RAW_ELEMENT_VR:
        return raw.VR  # what pydicom's own hook returns for an explicit VR other than UN
    found: dict = {}
    try:
        hooks.raw_element_vr(raw, found, ds=ds)
    except Exception:
        return None
    vr = found.get("VR")
    return vr if isinstance(vr, str) and (len(vr) == 2 or vr in AMBIGUOUS_BINARY_VRS) else None


def keeps_encoding(ds: pydicom.Dataset, raw: RawDataElement, vr: str) -> bool:
    """Whether ``raw`` as read encodes the element as pydicom would write it decoded:
    its explicit VR held, or it was read implicitly from an implicit VR dataset."""
    return raw.VR == vr if raw.VR is not None else ds.original_encoding == (True, True)


# Text VRs (number strings included) pydicom decodes whatever their bytes (replacing what
# the character set cannot decode, keeping an invalid number as text, with a warning)
# unless its validation mode is RAISE; binary numbers decode unless their length is not a
# multiple of the number's size. tests/unit/client/deid/test_raw.py holds pydicom to both.
TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UR", "LO", "LT", "SH", "ST", "UC", "UT", "UI", "PN",
                      "DS", "IS"})
NUMBER_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "SV": 8, "UV": 8}


def decodes(ds: pydicom.Dataset, raw: RawDataElement, vr: str) -> bool:
    """Whether pydicom can decode ``raw`` of VR ``vr`` (as ``ds[tag]`` would, without
    storing the result)."""
    if config.settings.reading_validation_mode != config.RAISE:
        if vr in TEXT_VRS:
            return True
        if vr in NUMBER_SIZES and raw.value is not None:
            return len(raw.value) % NUMBER_SIZES[vr] == 0
    if raw.tag == _CHARACTER_SET:
        charset = default_encoding
    else:
        charset = ds.original_character_set or ds._character_set
    try:
        convert_raw_data_element(raw, encoding=charset, ds=ds)
    except Exception:
        return False
    return True


def replaced(ds: pydicom.Dataset, raw: RawDataElement, vr: str, value: bytes) -> RawDataElement | None:
    """``raw`` holding ``value`` (bytes as written, little endian) instead of its own, with
    ``vr`` as its explicit VR; None where pydicom would not write it as it stands (big
    endian, or implicit in an explicit dataset): the caller builds a DataElement."""
    if not raw.is_little_endian or (raw.VR is None and ds.original_encoding != (True, True)):
        return None
    return raw._replace(VR=None if raw.VR is None else vr, length=len(value), value=value, is_buffered=False)


def remapped_uid_bytes(value: bytes | None, remap) -> bytes | None:
    """The bytes pydicom writes for a UI value after ``remap`` of each of its values, from the
    value's bytes as read: decoded and split as pydicom's ``convert_UI`` does, joined and
    null-padded as its ``write_UI``; None for a deferred value."""
    if value is None:
        return None
    text = value.decode(default_encoding).rstrip(" \0")
    if not text:
        return b""
    text = "\\".join(remap(uid) for uid in text.split("\\"))
    return (text + "\0" * (len(text) % 2)).encode(default_encoding)


@functools.cache
def dummy_bytes(vr: str) -> bytes:
    """The value bytes pydicom writes (little endian) for ``dummy_value(vr)``."""
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = True, True
    write_data_element(fp, DataElement(0x00100010, vr, dummy_value(vr)))
    return fp.getvalue()[8:]  # after the implicit header: tag, 32-bit length
