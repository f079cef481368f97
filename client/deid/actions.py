"""Resolve Table E.1-1 codes to one concrete operation, and the dummy value per VR.

Combined codes need the attribute's type (1, 2 or 3) in the instance's IOD, which
this engine does not know. It takes the conservative choice that keeps the
instance valid whatever the type: Z/D -> D, X/Z -> Z, X/D -> D, X/Z/D -> D and
X/Z/U* -> U (keep the sequence, remap the UIDs inside it).
"""
from __future__ import annotations

import enum

from .options import DeidOptions
from .table import Entry


class Op(enum.Enum):
    """A concrete operation on one element."""

    REMOVE = "X"
    ZERO = "Z"
    DUMMY = "D"
    KEEP = "K"
    CLEAN = "C"  # descriptor clean; falls back to the Basic Profile operation
    REMAP = "U"
    SHIFT = "shift"  # dates option: shift DA/DT; falls back to the Basic Profile operation


_CONSERVATIVE = {
    "X": Op.REMOVE, "Z": Op.ZERO, "D": Op.DUMMY, "K": Op.KEEP, "C": Op.CLEAN, "U": Op.REMAP,
    "Z/D": Op.DUMMY, "X/Z": Op.ZERO, "X/D": Op.DUMMY, "X/Z/D": Op.DUMMY, "X/Z/U*": Op.REMAP,
}

DATE_VRS = frozenset({"DA", "DT"})
CLEANABLE_VRS = frozenset({"AE", "CS", "LO", "LT", "SH", "ST", "UC", "UT", "SQ"})


def basic_op(entry: Entry) -> Op:
    """The Basic Profile operation for a table entry."""
    return _CONSERVATIVE[entry.basic]


def resolve(entry: Entry, vr: str, options: DeidOptions) -> Op:
    """Operation for a table entry under the chosen options (an option overrides the profile)."""
    if options.retain_longitudinal_modified_dates and entry.retain_long_modified_dates:
        if vr in DATE_VRS:
            return Op.SHIFT
        if vr == "TM":
            return Op.KEEP
        # binary timestamps and UTC offsets cannot be shifted: Basic Profile applies
    codes = []
    if options.retain_patient_characteristics and entry.retain_patient_characteristics:
        codes.append(entry.retain_patient_characteristics)
    if options.clean_descriptors and entry.clean_descriptors:
        codes.append(entry.clean_descriptors)
    if "C" in codes:
        return Op.CLEAN if vr in CLEANABLE_VRS else basic_op(entry)
    if "K" in codes:
        return Op.KEEP
    return basic_op(entry)


DUMMY_TEXT = "ANONYMIZED"
DUMMY_BY_VR: dict[str, object] = {
    "AE": DUMMY_TEXT, "CS": DUMMY_TEXT, "LO": DUMMY_TEXT, "LT": DUMMY_TEXT, "PN": DUMMY_TEXT,
    "SH": DUMMY_TEXT, "ST": DUMMY_TEXT, "UC": DUMMY_TEXT, "UT": DUMMY_TEXT,
    "UR": "urn:fedrad:anonymized",
    "DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000Y",
    "DS": "0", "IS": "0",
    "US": 0, "SS": 0, "UL": 0, "SL": 0, "UV": 0, "SV": 0, "FL": 0.0, "FD": 0.0, "AT": 0,
    "US or SS": 0, "US or OW": 0, "US or SS or OW": 0,
}
DUMMY_BYTES = b"\x00" * 8  # OB, OW, OF, OD, OL, OV, UN and ambiguous byte VRs


def dummy_value(vr: str) -> object:
    """A non-empty dummy value consistent with ``vr`` (SQ and UI are handled by the walker)."""
    return DUMMY_BY_VR.get(vr, DUMMY_BYTES)
