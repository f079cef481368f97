"""encode() writes exactly what pydicom's save_as(enforce_file_format=True) writes."""
from __future__ import annotations

import io
import warnings

import pydicom
import pytest

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
