"""Part 10 bytes of a de-identified dataset, exactly as pydicom's ``save_as(enforce_file_format=True)``.

pydicom spends tens of function calls on every element it writes. Elements the walk kept
as read (raw, see ``walk.py``) are written here with one packed header and their own
value bytes, and so are decoded elements whose bytes are plain: empty values, ASCII
strings, integers. Sequences, person names, number strings and everything else go
through pydicom's element writer. A dataset whose
encoding changes on writing (transfer syntax vs. how it was read, a changed character
set, deflate, big endian, a private syntax) is written by pydicom itself.
"""
from __future__ import annotations

import copy
import io
import struct

import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

SEPARATE_VALUE = 64 << 10
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_IMPLICIT = struct.Struct("<HHI")
_EXPLICIT_16 = struct.Struct("<HH2sH")
_EXPLICIT_32 = struct.Struct("<HH2sHI")
_GROUP_LENGTH = 0x00020000
_MEDIA_STORAGE = {"MediaStorageSOPClassUID": 0x00020002, "MediaStorageSOPInstanceUID": 0x00020003}
# write_string / write_DA... in pydicom: the default repertoire, space padding.
_PLAIN_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UR"})
# write_text: the dataset's character set; every DICOM character set encodes ASCII as ASCII
# (ISO 2022 escapes aside, which ASCII without ESC never needs).
_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})
_INTEGER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l"}
# Version, SOP class and instance, transfer syntax, implementation class and version name.
_FAST_META_VRS = {0x00020001: "OB", 0x00020002: "UI", 0x00020003: "UI", 0x00020010: "UI", 0x00020012: "UI",
                  0x00020013: "SH"}


def encode(ds: pydicom.Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file (preamble, file meta, body)."""
    return b"".join(encode_parts(ds))


def encode_parts(ds: pydicom.Dataset) -> list[bytes]:
    """``encode(ds)`` as consecutive parts, each value of at least ``SEPARATE_VALUE`` bytes
    (the pixel data) its own part, the element's bytes as read, not a copy: the store
    encrypts the parts in place of a joined file (``client.store.envelope.seal``)."""
    syntax = getattr(ds, "file_meta", FileMetaDataset()).get("TransferSyntaxUID")
    if not _fast(ds, syntax):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return [buffer.getvalue()]
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
    pixels = ds.get_item(_PIXEL_DATA)
    if pixels is not None and not _raw_as_written(pixels, syntax.is_compressed):
        ds[_PIXEL_DATA].is_undefined_length = syntax.is_compressed
    parts: list[bytes] = []
    _body(fp, ds, parts)
    return parts


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


def _body(fp: DicomBytesIO, ds: pydicom.Dataset, parts: list[bytes]) -> None:
    """pydicom's ``write_dataset`` for an unchanged encoding, with raw elements packed here,
    appended to ``parts`` after what ``fp`` holds; a large value becomes a part of its own."""
    charset = ds.get("SpecificCharacterSet", "ISO_IR 6")  # pydicom's "iso8859", by its faster-to-convert name
    implicit = fp.is_implicit_VR
    for tag in sorted(ds.keys()):
        if tag.element == 0 and tag.group > 6:
            continue  # retired group lengths are not written
        elem = ds.get_item(tag)
        if isinstance(elem, RawDataElement):
            value = elem.value if elem.length != _UNDEFINED else None
        else:
            value = _plain_value(elem)
        header = None if value is None else _header(elem.tag, elem.VR, len(value), implicit)
        if header is None:
            write_data_element(fp, elem, charset)
        elif len(value) >= SEPARATE_VALUE:
            fp.write(header)
            parts += [fp.getvalue(), value]
            fp = _empty_like(fp)
        else:
            fp.write(header)
            fp.write(value)
    parts.append(fp.getvalue())


def _raw_as_written(elem, encapsulated: bool) -> bool:
    """Whether a raw pixel data element is written as read (encapsulated with an undefined
    length, or native with an even one); decoding it would copy the pixels twice."""
    if not isinstance(elem, RawDataElement):
        return False
    if elem.length == _UNDEFINED:
        return encapsulated
    return not encapsulated and elem.value is not None and len(elem.value) % 2 == 0


def _empty_like(fp: DicomBytesIO) -> DicomBytesIO:
    empty = DicomBytesIO()
    empty.is_implicit_VR, empty.is_little_endian = fp.is_implicit_VR, fp.is_little_endian
    return empty


def _plain_value(elem: DataElement) -> bytes | None:
    """A decoded element's value bytes (padded) as pydicom writes them in little endian,
    for the plain cases; None for pydicom to write."""
    vr, value = elem.VR, elem.value
    if vr == "SQ" or elem.is_undefined_length or getattr(elem, "is_buffered", False):
        return None
    if vr in _INTEGER_FORMATS:
        if value is None or value == "":
            return b""
        values = [value] if isinstance(value, int) else value
        if not isinstance(values, (list, MultiValue)) or not all(type(v) is int for v in values):
            return None
        try:
            return struct.pack(f"<{len(values)}{_INTEGER_FORMATS[vr]}", *values)
        except struct.error:
            return None
    if vr not in _PLAIN_STRING_VRS and vr not in _TEXT_VRS and vr != "UI":
        return None
    if value is None:
        return b""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, MultiValue)) and all(isinstance(v, str) for v in value):
        text = "\\".join(value)
    else:
        return None
    if not text.isascii() or "\x1b" in text:
        return None
    data = text.encode("ascii")
    return data + (b"\x00" if vr == "UI" else b" ") if len(data) % 2 else data


def _header(tag: int, vr: str | None, length: int, implicit: bool) -> bytes | None:
    """Tag, VR and length of an element with a defined length; None for pydicom to write."""
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        return _IMPLICIT.pack(group, element, length)
    if vr in EXPLICIT_VR_LENGTH_32:
        return _EXPLICIT_32.pack(group, element, vr.encode("ascii"), 0, length)
    if vr is None or len(vr) != 2 or length > 0xFFFF:
        return None
    return _EXPLICIT_16.pack(group, element, vr.encode("ascii"), length)
