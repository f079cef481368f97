"""Conservative cleaning of descriptors (action C on text).

A descriptor value is kept unchanged only when all of these hold; otherwise the
caller falls back to the Basic Profile action:

- none of its alphanumeric tokens (case-insensitive, >= 2 chars) equals a token of an
  identifying value of the same dataset;
- no identifying value, reduced to its letters and digits (>= 4 chars), occurs in the
  descriptor reduced the same way (catches "2021-03-04" against 20210304);
- it holds no run of 6 or more digits and no "^" (a record number or a person name
  from elsewhere).

Identifying values are, at every depth: every PN; every DA, DT and TM; and every
text value of a Table E.1-1 attribute that is neither a descriptor nor a patient
characteristic (i.e. has no C/K in those option columns).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import pydicom

from .table import ProfileTable

_TOKEN = re.compile(r"[A-Z0-9]+")
_NOT_ALNUM = re.compile(r"[^A-Z0-9]")
_LONG_DIGITS = re.compile(r"\d{6,}")
TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "DA", "DT", "TM"})


@dataclass(frozen=True)
class IdentifyingValues:
    """Tokens and squeezed strings of one dataset's identifying values."""

    tokens: frozenset[str]
    squeezed: frozenset[str]

    def allows(self, text: str) -> bool:
        """True when ``text`` passes every rule in this module's docstring."""
        upper = text.upper()
        if "^" in upper or _LONG_DIGITS.search(upper):
            return False
        if any(tok in self.tokens for tok in _TOKEN.findall(upper) if len(tok) >= 2):
            return False
        squeezed = _NOT_ALNUM.sub("", upper)
        return not any(value in squeezed for value in self.squeezed)


def _values(elem: pydicom.DataElement) -> list[str]:
    value = elem.value
    if value is None:
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [str(v) for v in value]
    return [str(value)]


def _is_identifying(elem: pydicom.DataElement, table: ProfileTable) -> bool:
    if elem.VR in ("PN", "DA", "DT", "TM"):
        return True
    if elem.VR not in TEXT_VRS or elem.tag.is_private:
        return False
    entry = table.lookup(int(elem.tag))
    return entry is not None and not entry.clean_descriptors and not entry.retain_patient_characteristics


def collect(ds: pydicom.Dataset, table: ProfileTable) -> IdentifyingValues:
    """Gather identifying tokens from ``ds`` and its sequences (file meta excluded)."""
    tokens: set[str] = set()
    squeezed: set[str] = set()

    def walk(dataset: pydicom.Dataset) -> None:
        for elem in dataset:
            if elem.VR == "SQ":
                for item in elem.value or ():
                    walk(item)
            elif _is_identifying(elem, table):
                for value in _values(elem):
                    upper = value.upper()
                    tokens.update(t for t in _TOKEN.findall(upper) if len(t) >= 2)
                    flat = _NOT_ALNUM.sub("", upper)
                    if len(flat) >= 4:
                        squeezed.add(flat)

    walk(ds)
    return IdentifyingValues(frozenset(tokens), frozenset(squeezed))
