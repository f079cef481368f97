"""Mark a de-identified dataset (PS3.15 E.1.1) and rebuild its File Meta Information."""
from __future__ import annotations

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, UID

from .options import DeidOptions
from .uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

# CID 7050 De-identification Method (PS3.16), scheme DCM.
BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_PIXEL_DATA = ("113101", "Clean Pixel Data Option")
CLEAN_DESCRIPTORS = ("113105", "Clean Descriptors Option")
MODIFIED_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
PATIENT_CHARACTERISTICS = ("113108", "Retain Patient Characteristics Option")
SAFE_PRIVATE = ("113111", "Retain Safe Private Option")


def method_codes(options: DeidOptions, pixels_cleaned: bool) -> list[tuple[str, str]]:
    """The CID 7050 codes for the profile and the options in force."""
    codes = [BASIC_PROFILE]
    if pixels_cleaned:
        codes.append(CLEAN_PIXEL_DATA)
    if options.clean_descriptors:
        codes.append(CLEAN_DESCRIPTORS)
    if options.retain_longitudinal_modified_dates:
        codes.append(MODIFIED_DATES)
    if options.retain_patient_characteristics:
        codes.append(PATIENT_CHARACTERISTICS)
    if options.retain_safe_private:
        codes.append(SAFE_PRIVATE)
    return codes


def mark(ds: Dataset, options: DeidOptions, edition: str, pixels_cleaned: bool) -> None:
    """Set Patient Identity Removed, the method text and codes, and the temporal flag."""
    codes = method_codes(options, pixels_cleaned)
    ds.PatientIdentityRemoved = "YES"
    # LO is at most 64 characters a value, so the text is one value per code.
    ds.DeidentificationMethod = [f"fedrad DICOM PS3.15 {edition} Annex E"] + [m for _, m in codes]
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = (
        "MODIFIED" if options.retain_longitudinal_modified_dates else "REMOVED"
    )


def file_meta(ds: Dataset, original: FileMetaDataset | None, remap) -> FileMetaDataset:
    """Fresh File Meta Information describing this de-identifier.

    Kept: the transfer syntax and the SOP class. The instance UID follows the new
    SOP Instance UID (or the remapped original). Dropped: source/sending/receiving
    AE titles, presentation addresses, private information, implementation fields.
    """
    original = original if original is not None else FileMetaDataset()
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    sop_class = ds.get("SOPClassUID") or original.get("MediaStorageSOPClassUID")
    if sop_class:
        meta.MediaStorageSOPClassUID = UID(str(sop_class))
    if ds.get("SOPInstanceUID"):
        meta.MediaStorageSOPInstanceUID = UID(str(ds.SOPInstanceUID))
    elif original.get("MediaStorageSOPInstanceUID"):
        meta.MediaStorageSOPInstanceUID = UID(remap(str(original.MediaStorageSOPInstanceUID)))
    meta.TransferSyntaxUID = UID(str(original.get("TransferSyntaxUID") or ExplicitVRLittleEndian))
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def scrub_container(ds: pydicom.Dataset) -> None:
    """Zero the preamble and forget where the dataset was read from."""
    ds.preamble = b"\x00" * 128
    for attr in ("filename", "buffer", "timestamp", "fileobj_type"):
        if attr in ds.__dict__:
            setattr(ds, attr, None)
