"""Part 10 bytes of a de-identified dataset, exactly as pydicom's ``save_as(enforce_file_format=True)``.

pydicom spends tens of function calls on every element it writes. Elements the walk kept
as read (raw, see ``walk.py``) are written here with one packed header and their own
value bytes; every other element goes through pydicom's element writer. A dataset whose
encoding changes on writing (transfer syntax vs. how it was read, a changed character
set, deflate, big endian, a private syntax) is written by pydicom itself.
"""
from __future__ import annotations

import copy
import io
import struct

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

_UNDEFINED = 0xFFFFFFFF
_IMPLICIT = struct.Struct("<HHI")
_EXPLICIT_16 = struct.Struct("<HH2sH")
_EXPLICIT_32 = struct.Struct("<HH2sHI")
_GROUP_LENGTH = 0x00020000
_MEDIA_STORAGE = {"MediaStorageSOPClassUID": 0x00020002, "MediaStorageSOPInstanceUID": 0x00020003}
# Version, SOP class and instance, transfer syntax, implementation class and version name.
_FAST_META_VRS = {0x00020001: "OB", 0x00020002: "UI", 0x00020003: "UI", 0x00020010: "UI", 0x00020012: "UI",
                  0x00020013: "SH"}


def encode(ds: pydicom.Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file (preamble, file meta, body)."""
    syntax = getattr(ds, "file_meta", FileMetaDataset()).get("TransferSyntaxUID")
    if not _fast(ds, syntax):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()
    changes = {}
    for meta_keyword, keyword in (("MediaStorageSOPClassUID", "SOPClassUID"),
                                  ("MediaStorageSOPInstanceUID", "SOPInstanceUID")):
        value = ds.get(keyword)  # what save_as does: the meta follows the dataset
        if ds.file_meta.get(meta_keyword) is None or (value and value != ds.file_meta.get(meta_keyword)):
            changes[meta_keyword] = value
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    fp.write(getattr(ds, "preamble", None) or b"\x00" * 128)
    fp.write(b"DICM")
    packed = _file_meta_bytes(ds.file_meta, changes)
    if packed is not None:
        fp.write(packed)
    else:
        meta = copy.deepcopy(ds.file_meta)
        for meta_keyword, value in changes.items():
            setattr(meta, meta_keyword, value)
        write_file_meta_info(fp, meta, enforce_standard=True)
    fp.is_implicit_VR = syntax.is_implicit_VR
    if "PixelData" in ds:
        ds["PixelData"].is_undefined_length = syntax.is_compressed
    _body(fp, ds)
    return fp.getvalue()


def _file_meta_bytes(meta: FileMetaDataset, changes: dict) -> bytes | None:
    """The File Meta group as ``write_file_meta_info(enforce_standard=True)`` writes it, for
    the six elements the de-identifier writes (``marking.file_meta``), each non-empty and
    ASCII; None for any other meta, which pydicom then writes."""
    values = {}
    for tag in meta.keys():
        if int(tag) != _GROUP_LENGTH:
            values[int(tag)] = meta[tag].VR, meta[tag].value
    for keyword, value in changes.items():
        values[_MEDIA_STORAGE[keyword]] = "UI", value
    if set(values) != set(_FAST_META_VRS):
        return None
    parts = []
    for tag in sorted(values):
        vr, value = values[tag]
        if vr != _FAST_META_VRS[tag] or not value:
            return None
        if vr == "OB":
            if not isinstance(value, bytes):
                return None
            data = value + b"\x00" * (len(value) % 2)
            parts.append(_EXPLICIT_32.pack(0x0002, tag & 0xFFFF, b"OB", 0, len(data)) + data)
            continue
        if not isinstance(value, str) or not value.isascii() or "\\" in value:
            return None
        data = value.encode("ascii")
        data += (b"\x00" if vr == "UI" else b" ") * (len(data) % 2)
        if len(data) > 0xFFFF:
            return None
        parts.append(_EXPLICIT_16.pack(0x0002, tag & 0xFFFF, vr.encode("ascii"), len(data)) + data)
    body = b"".join(parts)
    return _EXPLICIT_16.pack(0x0002, 0x0000, b"UL", 4) + struct.pack("<I", len(body)) + body


def _fast(ds: pydicom.Dataset, syntax) -> bool:
    """Whether pydicom would write the body in the encoding it was read in."""
    if syntax is None or syntax.is_private or not syntax.is_transfer_syntax:
        return False
    if syntax == DeflatedExplicitVRLittleEndian or not syntax.is_little_endian:
        return False
    return (ds.original_encoding == (syntax.is_implicit_VR, True)
            and ds.original_character_set == ds._character_set)


def _body(fp: DicomBytesIO, ds: pydicom.Dataset) -> None:
    """pydicom's ``write_dataset`` for an unchanged encoding, with raw elements packed here."""
    charset = ds.get("SpecificCharacterSet", "iso8859")
    implicit = fp.is_implicit_VR
    for tag in sorted(ds.keys()):
        if tag.element == 0 and tag.group > 6:
            continue  # retired group lengths are not written
        elem = ds.get_item(tag)
        header = _raw_header(elem, implicit) if isinstance(elem, RawDataElement) else None
        if header is None:
            write_data_element(fp, elem, charset)
        else:
            fp.write(header)
            fp.write(elem.value)


def _raw_header(raw: RawDataElement, implicit: bool) -> bytes | None:
    """Tag, VR and length of a raw element with a defined length; None for pydicom to write."""
    value = raw.value
    if value is None or raw.length == _UNDEFINED:
        return None
    group, element = raw.tag >> 16, raw.tag & 0xFFFF
    if implicit:
        return _IMPLICIT.pack(group, element, len(value))
    vr = raw.VR
    if vr in EXPLICIT_VR_LENGTH_32:
        return _EXPLICIT_32.pack(group, element, vr.encode("ascii"), 0, len(value))
    if vr is None or len(vr) != 2 or len(value) > 0xFFFF:
        return None
    return _EXPLICIT_16.pack(group, element, vr.encode("ascii"), len(value))
