"""The element-by-element walk behind ``Deidentifier``; see ``profile.py`` for the rules."""
from __future__ import annotations

import enum

import pydicom
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.multival import MultiValue

from . import clean, dates
from .actions import Op, basic_op, dummy_value, resolve
from .options import DeidOptions
from .raw import AMBIGUOUS_BINARY_VRS, decodes, dummy_bytes, keeps_encoding, raw_vr, remapped_uid_bytes, replaced
from .table import Entry, ProfileTable
from .uids import CLASS_UID_TAGS

_MAX_CACHED_OPS = 100_000  # distinct (tag, VR, mode): far more than the data dictionary's
_DUMMY_TEXT_VRS = frozenset({"AE", "LO", "LT", "SH", "ST", "UC", "UT", "UR"})
_CLEAN_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})


class Mode(enum.Enum):
    """How text not listed in the table is treated inside the current sequence."""

    NORMAL = "normal"
    DUMMY = "dummy"
    CLEAN = "clean"


def _values(elem: DataElement) -> list:
    value = elem.value
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]


def _set_values(elem: DataElement, values: list) -> None:
    elem.value = values[0] if len(values) == 1 else values


class Walk:
    """One de-identification pass over one dataset (holds per-dataset state)."""

    def __init__(self, table, options, remap, shift_days, identifying, ops: dict) -> None:
        self.table: ProfileTable = table
        self.options: DeidOptions = options
        self.remap = remap
        self.shift_days: int | None = shift_days
        self.identifying: clean.IdentifyingValues | None = identifying
        self.ops = ops  # (tag, VR, mode) -> Op, shared by every walk with the same table and options

    def dataset(self, ds: pydicom.Dataset, mode: Mode) -> None:
        keep_private = self._private_to_keep(ds)
        for tag in list(ds.keys()):
            t = int(tag)
            group, element = t >> 16, t & 0xFFFF
            if (
                element == 0
                or group == 0x0002
                or 0x5000 <= group <= 0x50FF
                or 0x6000 <= group <= 0x60FF
                or (group & 1 and t not in keep_private)
            ):
                del ds[tag]
                continue
            if not group & 1 and self._decided_raw(ds, tag, t, mode):
                continue
            try:
                elem = ds[tag]
            except Exception:  # a value pydicom cannot decode cannot be checked: drop it
                del ds[tag]
                continue
            if group & 1:
                if elem.VR == "SQ":
                    self._items(elem, mode)
                continue
            entry = self.table.lookup(t)
            self._apply(ds, elem, self._op(t, elem.VR, entry, mode), entry, mode)

    def _decided_raw(self, ds: pydicom.Dataset, tag, t: int, mode: Mode) -> bool:
        """Apply an operation that needs no decoded value to a raw element (see ``raw.py``);
        False when the element must be decoded first."""
        raw = ds.get_item(tag)
        vr = raw_vr(ds, raw)
        if vr is None or vr == "SQ":
            return False
        op = self.ops.get((t, vr, mode))
        if op is None:
            op = self._op(t, vr, self.table.lookup(t), mode)
            if len(self.ops) < _MAX_CACHED_OPS:
                self.ops[(t, vr, mode)] = op
        if vr in AMBIGUOUS_BINARY_VRS and op is not Op.REMOVE and op is not Op.KEEP:
            return False
        if op is Op.REMOVE:
            del ds[tag]
        elif op is Op.ZERO:
            ds[tag] = replaced(ds, raw, vr, b"") or DataElement(tag, vr, empty_value_for_VR(vr))
        elif op in (Op.DUMMY, Op.REMAP) and vr != "UI":
            ds[tag] = replaced(ds, raw, vr, dummy_bytes(vr)) or DataElement(tag, vr, dummy_value(vr))
        elif op in (Op.DUMMY, Op.REMAP):
            value = remapped_uid_bytes(raw.value, self.remap)
            new = None if value is None else replaced(ds, raw, vr, value)
            if new is None:
                return False
            ds[tag] = new
        elif op is Op.KEEP and keeps_encoding(ds, raw, vr):
            if not decodes(ds, raw, vr):  # a value pydicom cannot decode cannot be checked: drop it
                del ds[tag]
        else:
            return False
        return True

    def _private_to_keep(self, ds: pydicom.Dataset) -> set[int]:
        allow = self.options.retain_safe_private
        if not allow:
            return set()
        creators = {}
        for tag in ds.keys():
            t = int(tag)
            if t >> 16 & 1 and 0x0010 <= t & 0xFFFF <= 0x00FF:
                creators[t] = str(ds[tag].value or "").strip()
        keep: set[int] = set()
        for tag in ds.keys():
            t = int(tag)
            if not t >> 16 & 1 or t & 0xFFFF < 0x1000:
                continue
            creator_tag = (t & 0xFFFF0000) | (t & 0xFF00) >> 8
            if (creators.get(creator_tag), t & 0xFF) in allow:
                keep.update((t, creator_tag))
        return keep

    def _op(self, tag: int, vr: str, entry: Entry | None, mode: Mode) -> Op:
        return resolve(entry, vr, self.options) if entry else self._default_op(tag, vr, mode)

    def _default_op(self, tag: int, vr: str, mode: Mode) -> Op:
        dates_option = self.options.retain_longitudinal_modified_dates
        if vr in ("PN", "UN"):
            return Op.REMOVE
        if vr in ("DA", "DT"):
            return Op.SHIFT if dates_option else Op.REMOVE
        if vr == "TM":
            return Op.KEEP if dates_option else Op.REMOVE
        if vr == "UI":
            return Op.KEEP if tag in CLASS_UID_TAGS else Op.REMAP
        if mode is Mode.DUMMY and vr in _DUMMY_TEXT_VRS:
            return Op.DUMMY
        if mode is Mode.CLEAN and vr in _CLEAN_TEXT_VRS:
            return Op.CLEAN
        return Op.KEEP

    @staticmethod
    def _fallback(op: Op, entry: Entry | None) -> Op:
        if entry is not None:
            base = basic_op(entry)
            return Op.REMOVE if base is Op.CLEAN else base
        return Op.REMOVE if op is Op.SHIFT else Op.DUMMY

    def _items(self, elem: DataElement, mode: Mode) -> None:
        for item in elem.value or ():
            self.dataset(item, mode)

    def _apply(self, ds: pydicom.Dataset, elem: DataElement, op: Op, entry: Entry | None, mode: Mode) -> None:
        vr = elem.VR
        if op is Op.SHIFT:
            op = self._shift(elem) or self._fallback(op, entry)
        elif op is Op.CLEAN and vr != "SQ":
            op = self._clean(elem) or self._fallback(op, entry)
        if op is Op.REMOVE:
            del ds[elem.tag]
        elif op is Op.ZERO:
            elem.value = [] if vr == "SQ" else empty_value_for_VR(vr)
        elif vr == "SQ":
            next_mode = {Op.DUMMY: Mode.DUMMY, Op.CLEAN: Mode.CLEAN}.get(op, mode)
            self._items(elem, next_mode)
        elif vr == "UI" and op in (Op.REMAP, Op.DUMMY):
            values = [self.remap(str(v)) for v in _values(elem)]
            if values:
                _set_values(elem, values)
        elif op is Op.DUMMY or op is Op.REMAP:
            elem.value = dummy_value(vr)
        # Op.KEEP (and a passed SHIFT/CLEAN, already done): leave the value as it is

    def _shift(self, elem: DataElement) -> Op | None:
        """Shift DA/DT values in place; ``None`` if any value cannot be shifted."""
        if self.shift_days is None:
            return None
        shift = dates.shift_da if elem.VR == "DA" else dates.shift_dt
        values = [shift(str(v), self.shift_days) for v in _values(elem)]
        if any(v is None for v in values):
            return None
        if values:
            _set_values(elem, values)
        return Op.KEEP

    def _clean(self, elem: DataElement) -> Op | None:
        """Keep the text if every value passes the descriptor check, else ``None``."""
        if self.identifying is None:
            return None
        if all(self.identifying.allows(str(v)) for v in _values(elem)):
            return Op.KEEP
        return None
