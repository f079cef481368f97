"""Whole-day shifts of DA and DT values; ``None`` when a value cannot be shifted exactly."""
from __future__ import annotations

import datetime as dt
import re

_DA = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")  # YYYYMMDD or legacy YYYY.MM.DD
_DT = re.compile(r"^(\d{8})(.*)$")  # date part, then time / fraction / offset


def _shift_date(text: str, days: int) -> str | None:
    match = _DA.match(text)
    if not match:
        return None
    try:
        day = dt.date(int(match[1]), int(match[2]), int(match[3]))
        return (day + dt.timedelta(days=days)).strftime("%Y%m%d")
    except (ValueError, OverflowError):
        return None


def shift_da(value: str, days: int) -> str | None:
    """Shift one DA value; partial or malformed dates give ``None``."""
    return _shift_date(value.strip(" \0"), days)


def shift_dt(value: str, days: int) -> str | None:
    """Shift the date part of one DT value; the time and UTC offset are kept."""
    match = _DT.match(value.strip(" \0"))
    if not match:
        return None  # year-only or year-month precision cannot be shifted exactly
    shifted = _shift_date(match[1], days)
    return None if shifted is None else shifted + match[2]
