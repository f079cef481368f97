"""DICOM export of one synthetic radiograph, as a modality would send it.

CR Image Storage or Digital X-Ray Image Storage - For Presentation, Explicit VR Little
Endian, with complete (fake) identifying data and a vendor private block: the
de-identification step downstream must find and remove all of it.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from common.synth.detector import stored_value
from common.synth.people import Patient, SiteIdentity, age_string, dicom_date, dicom_time
from common.synth.profiles import SiteProfile
from common.synth.seeding import uid_for

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE_STORAGE_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
PRIVATE_GROUP = 0x0029


@dataclass(frozen=True)
class ImageRecord:
    """Everything about one image that is not a site constant."""

    patient: Patient
    date: dt.date
    start_seconds: float
    study_id: str
    accession: str
    exam_id: str
    referring: str
    operator: str
    view: str  # "PA" | "AP"
    study_uid: str
    series_uid: str
    sop_uid: str
    frame_uid: str
    kvp: float
    tube_current_ma: int
    exposure_ms: int


def sop_class_for(modality: str) -> str:
    return CR_IMAGE_STORAGE if modality == "CR" else DX_IMAGE_STORAGE_FOR_PRESENTATION


def _ds(value: float) -> str:
    """A DS string of at most 16 characters."""
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.4e}"


def window(profile: SiteProfile) -> tuple[float, float]:
    """Default (center, width) in rescaled units that shows the chest well."""
    low, high = (stored_value(a, profile) * profile.rescale_slope + profile.rescale_intercept for a in profile.window_range)
    return float(round((low + high) / 2, 1)), float(round(abs(high - low), 1))


def build_dataset(profile: SiteProfile, identity: SiteIdentity, record: ImageRecord, pixels: np.ndarray) -> Dataset:
    """The full DICOM dataset (with file meta) for stored `pixels` (uint16, rows x columns)."""
    sop_class = sop_class_for(profile.modality)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = record.sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = uid_for("implementation", profile.manufacturer, profile.software_version)
    meta.ImplementationVersionName = profile.software_version.replace(" ", "_")[:16]
    meta.SourceApplicationEntityTitle = identity.station[:16]

    ds = Dataset()
    ds.file_meta = meta
    patient, date = record.patient, dicom_date(record.date)
    t0 = record.start_seconds
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, dicom_time(t0 + 50)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, record.sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime, ds.SeriesTime = dicom_time(t0), dicom_time(t0 + 21)
    ds.AcquisitionTime, ds.ContentTime = dicom_time(t0 + 34), dicom_time(t0 + 47)
    ds.AccessionNumber = record.accession
    ds.Modality = profile.modality
    if profile.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = profile.manufacturer
    ds.InstitutionName = identity.institution
    ds.InstitutionAddress = identity.address
    ds.ReferringPhysicianName = record.referring
    ds.StationName = identity.station
    ds.StudyDescription = f"XR CHEST {record.view}"
    ds.SeriesDescription = f"CHEST {record.view}"
    ds.InstitutionalDepartmentName = identity.department
    ds.OperatorsName = record.operator
    ds.ManufacturerModelName = profile.model

    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = identity.issuer
    ds.PatientBirthDate = dicom_date(patient.birth_date)
    ds.PatientSex = patient.sex
    ds.OtherPatientIDs = patient.other_id
    other = Dataset()
    other.PatientID = patient.other_id
    other.IssuerOfPatientID = identity.other_issuer
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.PatientAge = age_string(patient.birth_date, record.date)

    ds.BodyPartExamined = "CHEST"
    ds.KVP = _ds(record.kvp)
    ds.DeviceSerialNumber = identity.device_serial
    ds.SoftwareVersions = profile.software_version
    ds.ProtocolName = f"CHEST {record.view}"
    ds.DistanceSourceToDetector = _ds(1800.0 if record.view == "PA" else 1000.0)
    ds.ExposureTime = str(record.exposure_ms)
    ds.XRayTubeCurrent = str(record.tube_current_ma)
    ds.Exposure = str(max(1, round(record.exposure_ms * record.tube_current_ma / 1000)))
    spacing = [_ds(profile.pixel_spacing_mm)] * 2
    if profile.modality == "DX":
        ds.ImagerPixelSpacing = spacing
        ds.DetectorType = "SCINTILLATOR"
    ds.Grid = "IN" if record.view == "PA" else "NONE"
    ds.ViewPosition = record.view

    ds.StudyInstanceUID = record.study_uid
    ds.SeriesInstanceUID = record.series_uid
    ds.StudyID = record.study_id
    ds.SeriesNumber = "1"
    ds.AcquisitionNumber = "1"
    ds.InstanceNumber = "1"
    ds.PatientOrientation = ["L", "F"]
    ds.FrameOfReferenceUID = record.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.BurnedInAnnotation = "NO"

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = profile.photometric
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    ds.PixelSpacing = spacing
    ds.BitsAllocated = 16
    ds.BitsStored = profile.bits_stored
    ds.HighBit = profile.bits_stored - 1
    ds.PixelRepresentation = 0
    if profile.modality == "DX":
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if profile.photometric == "MONOCHROME1" else -1
    center, width = window(profile)
    ds.WindowCenter, ds.WindowWidth = _ds(center), _ds(width)
    ds.WindowCenterWidthExplanation = "NORMAL"
    ds.RescaleIntercept = _ds(profile.rescale_intercept)
    ds.RescaleSlope = _ds(profile.rescale_slope)
    ds.RescaleType = "US"
    ds.LossyImageCompression = "00"
    if profile.modality == "DX":
        ds.PresentationLUTShape = "INVERSE" if profile.photometric == "MONOCHROME1" else "IDENTITY"

    block = ds.private_block(PRIVATE_GROUP, profile.private_creator, create=True)
    block.add_new(0x10, "LO", patient.name)
    block.add_new(0x11, "LO", record.exam_id)
    block.add_new(0x12, "SH", identity.code)
    block.add_new(0x20, "DS", _ds(profile.edge_enhance))

    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def write_dataset(ds: Dataset, path: Path) -> None:
    """Write a DICOM Part 10 file (preamble, file meta, Explicit VR Little Endian)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)
