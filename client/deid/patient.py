"""Keyed per-patient values: the opaque patient key and the date shift.

The patient's identity string is, in order of preference:
``"patient:" + PatientID``; ``"name-dob:" + PatientName + "|" + PatientBirthDate``
when PatientID is absent or empty; ``"study:" + StudyInstanceUID``; and
``"unknown"`` (one shared bucket) when none of these is present.
"""
from __future__ import annotations

import hashlib
import hmac

import pydicom

MAX_SHIFT_DAYS = 3650  # shifts are whole days in [-MAX_SHIFT_DAYS, -1]


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip(" \0")


def identity(ds: pydicom.Dataset) -> str:
    """The string the patient key and date shift are derived from (never stored)."""
    if patient_id := _text(ds, "PatientID"):
        return "patient:" + patient_id
    name = _text(ds, "PatientName")
    if name:
        return "name-dob:" + name + "|" + _text(ds, "PatientBirthDate")
    if study := _text(ds, "StudyInstanceUID"):
        return "study:" + study
    return "unknown"


def _digest(secret: bytes, message: str) -> bytes:
    return hmac.new(secret, message.encode("utf-8"), hashlib.sha256).digest()


def patient_key(secret: bytes, ident: str) -> str:
    """Opaque hex key: HMAC-SHA256(site secret, identity)."""
    return _digest(secret, ident).hex()


def date_shift_days(secret: bytes, ident: str) -> int:
    """Keyed whole-day shift in [-MAX_SHIFT_DAYS, -1], constant for one patient at one site."""
    value = int.from_bytes(_digest(secret, "date-shift:" + ident)[:8], "big")
    return -(1 + value % MAX_SHIFT_DAYS)
