"""encode() writes exactly what pydicom's save_as(enforce_file_format=True) writes."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
import pytest

from pydicom.filewriter import write_data_element

import client.deid.encode as encode_module
from client.deid.encode import encode

from .helpers import synthetic_dx


def _pydicom_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_corpus_after_deidentification_is_byte_identical_to_pydicom(corpus, deid):
    readable, _ = corpus
    compared = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in readable:
            result = deid(pydicom.dcmread(path), in_place=True)
            if result.dataset is None:
                continue
            try:
                expected = _pydicom_bytes(result.dataset)
            except Exception:  # pydicom cannot write it: neither can encode
                with pytest.raises(Exception):
                    encode(result.dataset)
                continue
            assert encode(result.dataset) == expected, path
            compared += 1
    assert compared > 100


@pytest.mark.parametrize("implicit", [False, True])
def test_kept_elements_are_written_from_their_own_bytes(deid, implicit):
    ds = synthetic_dx()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian if implicit else \
        pydicom.uid.ExplicitVRLittleEndian
    read = pydicom.dcmread(io.BytesIO(_pydicom_bytes(ds)))
    result = deid(read, in_place=True)
    assert isinstance(result.dataset.get_item("BodyPartExamined"), pydicom.dataelem.RawDataElement)
    data = encode(result.dataset)
    assert data == _pydicom_bytes(result.dataset)
    assert pydicom.dcmread(io.BytesIO(data)).BodyPartExamined == ds.BodyPartExamined


@pytest.mark.parametrize("change", ["none", "extra element", "odd version", "instance follows dataset",
                                    "no version name"])
def test_file_meta_is_packed_as_pydicom_writes_it_or_left_to_pydicom(deid, change):
    read = pydicom.dcmread(io.BytesIO(_pydicom_bytes(synthetic_dx())))
    ds = deid(read, in_place=True).dataset
    if change == "extra element":  # not one of the six the de-identifier writes: pydicom writes it
        ds.file_meta.SourceApplicationEntityTitle = "AUDIT"
    elif change == "odd version":
        ds.file_meta.FileMetaInformationVersion = b"\x00\x01\x02"
    elif change == "instance follows dataset":
        ds.SOPInstanceUID = "2.25.1234567"
    elif change == "no version name":  # pydicom adds its own name
        del ds.file_meta.ImplementationVersionName
    data = encode(ds)
    assert data == _pydicom_bytes(ds)
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("charset", [None, "ISO_IR 192", "\\ISO 2022 IR 87"])
def test_decoded_elements_are_packed_as_pydicom_writes_them_or_left_to_pydicom(deid, implicit, charset, monkeypatch):
    read = pydicom.dcmread(io.BytesIO(_pydicom_bytes(synthetic_dx())))
    ds = deid(read, in_place=True).dataset
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian if implicit else \
        pydicom.uid.ExplicitVRLittleEndian
    if charset:
        ds.SpecificCharacterSet = charset
    ds.set_original_encoding(implicit, True, ds._character_set)  # as if read so: encode's own path
    ds.StudyDescription = "CHEST PA"  # even
    ds.SeriesDescription = "PA"
    ds.ProtocolName = "odd"  # padded with a space
    ds.ImageType = ["DERIVED", "PRIMARY", "X"]  # multi-valued
    ds.ReferringPhysicianName = ""  # person name: pydicom's writer
    ds.PatientComments = "Größe"  # non-ASCII text: pydicom's writer
    ds.StationName = "A\x1bB"  # an escape: pydicom's writer
    ds.FrameOfReferenceUID = "2.25.123"  # odd UID, padded with NUL
    ds.AcquisitionDate = ""  # empty
    ds.Rows, ds.Columns = 64, 65
    ds.add_new(0x00181622, "US", [1, 2, 3])  # several integers
    ds.add_new(0x00280106, "SS", -5)
    ds.add_new(0x00181150, "IS", 7)  # number string: pydicom's writer
    ds.add_new(0x00189004, "CS", None)
    ds.Manufacturer = "x" * 70_000  # explicit VR: too long for a 16-bit length, pydicom's writer (as UN)
    by_pydicom = []

    def spy(fp, elem, encodings=None):
        by_pydicom.append(elem.tag)
        return write_data_element(fp, elem, encodings)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = _pydicom_bytes(ds)
        monkeypatch.setattr(encode_module, "write_data_element", spy)
        assert encode(ds) == expected
    assert pydicom.dcmread(io.BytesIO(expected)).Columns == 65
    packed = {"StudyDescription", "ProtocolName", "ImageType", "FrameOfReferenceUID", "AcquisitionDate", "Columns",
              0x00181622, 0x00280106, 0x00189004}
    assert not {pydicom.tag.Tag(k) for k in packed} & set(by_pydicom)
    assert {pydicom.tag.Tag(k) for k in ("ReferringPhysicianName", "PatientComments", "StationName",
                                           0x00181150)} <= set(by_pydicom)
    assert (pydicom.tag.Tag("Manufacturer") in by_pydicom) is not implicit


@pytest.mark.parametrize("implicit", [False, True])
def test_zeroed_and_dummy_elements_left_raw_write_as_their_decoded_values_would(deid, implicit):
    ds = synthetic_dx()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian if implicit else \
        pydicom.uid.ExplicitVRLittleEndian
    data = _pydicom_bytes(ds)
    as_read = deid(pydicom.dcmread(io.BytesIO(data)), in_place=True).dataset
    decoded = pydicom.dcmread(io.BytesIO(data))
    for _ in decoded.iterall():  # every element decoded first: the walk builds DataElements
        pass
    decoded = deid(decoded, in_place=True).dataset
    replaced = [as_read.get_item(tag) for tag in as_read.keys()
                if isinstance(as_read.get_item(tag), pydicom.dataelem.RawDataElement)
                and not isinstance(decoded.get_item(tag), pydicom.dataelem.RawDataElement)]
    assert any(raw.length == 0 for raw in replaced) and any(raw.length > 0 for raw in replaced)
    assert encode(as_read) == encode(decoded) == _pydicom_bytes(decoded)
    for raw in replaced:
        assert as_read[raw.tag].value == decoded[raw.tag].value


@pytest.mark.parametrize("implicit", [False, True])
def test_large_values_are_parts_of_their_own_not_copies(deid, implicit):
    ds = synthetic_dx()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian if implicit else \
        pydicom.uid.ExplicitVRLittleEndian
    pixels = np.arange(256 * 256, dtype=np.uint16).reshape(256, 256)
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    result = deid(pydicom.dcmread(io.BytesIO(_pydicom_bytes(ds))), in_place=True)
    as_read = result.dataset.get_item("PixelData").value
    assert len(as_read) >= encode_module.SEPARATE_VALUE
    parts = encode_module.encode_parts(result.dataset)
    assert len(parts) == 3 and parts[1] is as_read  # header and meta, the pixels as read, the rest
    assert b"".join(parts) == encode(result.dataset) == _pydicom_bytes(result.dataset)
