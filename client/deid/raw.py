"""Elements still in their raw (as read) form: what can be decided without decoding them.

pydicom decodes an element's value on first access, which costs more than most of what
de-identification then does with it. An element that is removed, zeroed or given a dummy
needs only its VR; one that is kept is left raw, so it is written from its own bytes
(``encode.py``), after a check that pydicom can decode it (``decodes``).
"""
from __future__ import annotations

import pydicom
from pydicom import config
from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.hooks import hooks

_CHARACTER_SET = 0x00080005


def raw_vr(ds: pydicom.Dataset, raw) -> str | None:
    """The VR pydicom gives ``raw`` when it decodes it, found without decoding the value;
    ``None`` when only decoding can tell (ambiguous VRs, callbacks, deferred values) or
    ``raw`` is already decoded."""
    if not isinstance(raw, RawDataElement) or config.data_element_callback:
        return None
    if raw.value is None and raw.length != 0:
        return None
    found: dict = {}
    try:
        hooks.raw_element_vr(raw, found, ds=ds)
    except Exception:
        return None
    vr = found.get("VR")
    return vr if isinstance(vr, str) and len(vr) == 2 else None


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
