"""Test helpers: site secrets, (de)serialisation, and a synthetic PHI-laden dataset."""
from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

SECRET = b"site-A secret for tests 0123456789"
OTHER_SECRET = b"site-B secret for tests 9876543210"


def to_bytes(ds: Dataset) -> bytes:
    """Serialise as the store would (preamble and file meta when present)."""
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds)
    return buf.getvalue()


def read_bytes(data: bytes) -> FileDataset:
    return pydicom.dcmread(io.BytesIO(data))


def real(name: str) -> FileDataset:
    """A file from pydicom's test data, by name."""
    return pydicom.dcmread(get_testdata_file(name))


# Values the synthetic dataset carries that must never survive de-identification.
SYNTHETIC_PHI = {
    "name": b"Doe^Jane^Quincy",
    "family": b"Quincy",
    "mrn": b"MRN-778899",
    "birth": b"19700412",
    "accession": b"ACC445566",
    "study_uid": b"1.2.826.0.1.3680043.2.1125.1.111",
    "series_uid": b"1.2.826.0.1.3680043.2.1125.1.222",
    "sop_uid": b"1.2.826.0.1.3680043.2.1125.1.333",
    "ref_uid": b"1.2.826.0.1.3680043.2.1125.1.444",
    "referrer": b"House^Gregory",
    "institution": b"St Elsewhere General",
    "station": b"CRROOM1XR",
    "study_date": b"20230115",
    "study_time": b"101500",
    "impl_uid": b"1.2.826.0.1.3680043.2.1125.9.9",
    "impl_version": b"HOSP_PACS_42",
    "source_ae": b"HOSP_PACS_AE",
    "sr_text": b"Jane was seen by Dr Wilson",
    "private_text": b"Jane Doe private note",
    "private_nested": b"Wilson^Nurse",
    "overlay_text": b"Overlay by Jane",
    "curve_text": b"Curve Quincy",
    "nested_operator": b"Operator^Nested",
    "request_id": b"RP-555-X",
    "non_table_pn": b"Reviewer^Second",
    "non_table_da": b"20190707",
    "preamble": b"HOSPITAL-PREAMBLE",
    "icon": b"ICONBYTES-JANE",
}


def synthetic_dx(*, burned_in: str = "NO") -> FileDataset:
    """A chest DX with a laterality marker: PHI at every depth, overlays, curves,
    private blocks, file meta and a non-zero preamble; read back from bytes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = SYNTHETIC_PHI["sop_uid"].decode()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = SYNTHETIC_PHI["impl_uid"].decode()
    meta.ImplementationVersionName = SYNTHETIC_PHI["impl_version"].decode()
    meta.SourceApplicationEntityTitle = SYNTHETIC_PHI["source_ae"].decode()
    preamble = SYNTHETIC_PHI["preamble"].ljust(128, b"!")
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=preamble)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = SYNTHETIC_PHI["study_uid"].decode()
    ds.SeriesInstanceUID = SYNTHETIC_PHI["series_uid"].decode()
    ds.PatientName = SYNTHETIC_PHI["name"].decode()
    ds.PatientID = SYNTHETIC_PHI["mrn"].decode()
    ds.PatientBirthDate = SYNTHETIC_PHI["birth"].decode()
    ds.PatientSex = "F"
    ds.PatientAge = "053Y"
    ds.PatientWeight = "61.5"
    ds.AccessionNumber = SYNTHETIC_PHI["accession"].decode()
    ds.StudyDate = SYNTHETIC_PHI["study_date"].decode()
    ds.SeriesDate = SYNTHETIC_PHI["study_date"].decode()
    ds.StudyTime = SYNTHETIC_PHI["study_time"].decode()
    ds.ReferringPhysicianName = SYNTHETIC_PHI["referrer"].decode()
    ds.InstitutionName = SYNTHETIC_PHI["institution"].decode()
    ds.StationName = SYNTHETIC_PHI["station"].decode()
    ds.StudyDescription = "CHEST PA"
    ds.SeriesDescription = "PA Quincy"
    ds.Modality = "DX"
    ds.Manufacturer = "ACME Imaging"
    ds.ManufacturerModelName = "XR-9000"
    ds.BodyPartExamined = "CHEST"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BurnedInAnnotation = burned_in
    ds.add_new(0x00080000, "UL", 1234)  # group length: must go
    ds.add_new(0x00140104, "PN", SYNTHETIC_PHI["non_table_pn"].decode())  # PN not in Table E.1-1
    ds.add_new(0x00181204, "DA", SYNTHETIC_PHI["non_table_da"].decode())  # DA not in Table E.1-1
    code = Dataset()
    code.CodeValue = "51185008"
    code.CodingSchemeDesignator = "SCT"
    code.CodingSchemeUID = "2.16.840.1.113883.6.96"
    code.CodeMeaning = "Chest"
    ds.AnatomicRegionSequence = Sequence([code])
    purpose = Dataset()
    purpose.CodeValue = "121311"
    purpose.CodingSchemeDesignator = "DCM"
    purpose.CodeMeaning = "Localizer"
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ref.ReferencedSOPInstanceUID = SYNTHETIC_PHI["ref_uid"].decode()
    ref.PurposeOfReferenceCodeSequence = Sequence([purpose])
    ref.OperatorsName = SYNTHETIC_PHI["nested_operator"].decode()  # X, one level down
    ds.ReferencedImageSequence = Sequence([ref])
    request = Dataset()
    request.RequestedProcedureID = SYNTHETIC_PHI["request_id"].decode()
    ds.RequestAttributesSequence = Sequence([request])
    text_item = Dataset()
    text_item.RelationshipType = "CONTAINS"
    text_item.ValueType = "TEXT"
    text_item.TextValue = SYNTHETIC_PHI["sr_text"].decode()
    ds.ContentSequence = Sequence([text_item])
    icon = Dataset()
    icon.Rows, icon.Columns = 2, 8
    icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, "MONOCHROME2"
    icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
    icon.PixelData = SYNTHETIC_PHI["icon"].ljust(16, b".")
    ds.IconImageSequence = Sequence([icon])
    # private blocks, one nested
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    ds.add_new(0x00091001, "LO", SYNTHETIC_PHI["private_text"].decode())
    ds.add_new(0x00091002, "DS", "3.5")
    inner = Dataset()
    inner.add_new(0x00110010, "LO", "OTHER CORP")
    inner.add_new(0x00111001, "PN", SYNTHETIC_PHI["private_nested"].decode())
    ds.add_new(0x00110010, "LO", "OTHER CORP")
    ds.add_new(0x00111010, "SQ", Sequence([inner]))
    # overlay and curve
    ds.add_new(0x60000010, "US", 8)
    ds.add_new(0x60000011, "US", 8)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60000022, "LO", SYNTHETIC_PHI["overlay_text"].decode())
    ds.add_new(0x60003000, "OW", b"\xff" * 8)
    ds.add_new(0x50000005, "US", 1)
    ds.add_new(0x50002500, "LO", SYNTHETIC_PHI["curve_text"].decode())
    ds.add_new(0x50003000, "OW", b"\x01\x02" * 4)
    # pixels: a laterality marker "L" in the top-left corner
    pixels = np.full((32, 32), 100, dtype=np.uint16)
    pixels[2:8, 2:4] = 4000
    pixels[6:8, 2:6] = 4000
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    return read_bytes(to_bytes(ds))
