"""Burned-in identity risk judged from the header, and site pixel-clean rules.

Risk, checked in this order (first hit wins):

1. ``recognizable-features``: RecognizableVisualFeatures is YES, or the image is
   visible-light photography (Modality XC, VL Photographic SOP classes) and does not
   say NO. A pixel-clean rule never lifts this one: blanking text does not remove a face.
2. ``burned-in-annotation``: BurnedInAnnotation is YES.
3. ``ultrasound``: Modality US/IVUS or an ultrasound SOP class, whatever
   BurnedInAnnotation says (ultrasound scanners burn in text as a rule).
4. ``secondary-capture``: a Secondary Capture SOP class, a ConversionType value, or
   ImageType holding SECONDARY together with a screen-capture style value
   (WSD, SD, SI, DRW, SCREEN SHOT), whatever BurnedInAnnotation says.

A CR/DX image with BurnedInAnnotation NO (e.g. only a laterality marker) carries no
risk here. A matching ``PixelCleanRule`` is applied whenever it matches; it lifts
risks 2-4 and sets BurnedInAnnotation to NO.
"""
from __future__ import annotations

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian

from .options import PixelCleanRule
from .result import QuarantineReason

_US_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.6.2",
    "1.2.840.10008.5.1.4.1.1.3", "1.2.840.10008.5.1.4.1.1.3.1",
})
_SC_CLASSES = frozenset(f"1.2.840.10008.5.1.4.1.1.7{s}" for s in ("", ".1", ".2", ".3", ".4"))
_VL_PHOTO_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.77.1.4", "1.2.840.10008.5.1.4.1.1.77.1.4.1"})
_SCREEN_IMAGE_TYPES = frozenset({"WSD", "SD", "SI", "DRW", "SCREEN SHOT"})


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip(" \0").upper()


def _image_type(ds: pydicom.Dataset) -> set[str]:
    value = ds.get("ImageType")
    if value is None:
        return set()
    values = [value] if isinstance(value, str) else list(value)
    return {str(v).strip().upper() for v in values}


def assess(ds: pydicom.Dataset) -> QuarantineReason | None:
    """The header-judged burned-in risk of ``ds``, or ``None``."""
    sop_class = _text(ds, "SOPClassUID")
    modality = _text(ds, "Modality")
    visual = _text(ds, "RecognizableVisualFeatures")
    if visual == "YES" or (visual != "NO" and (modality == "XC" or sop_class in _VL_PHOTO_CLASSES)):
        return QuarantineReason.RECOGNIZABLE_FEATURES
    if _text(ds, "BurnedInAnnotation") == "YES":
        return QuarantineReason.BURNED_IN_ANNOTATION
    if modality in ("US", "IVUS") or sop_class in _US_CLASSES:
        return QuarantineReason.ULTRASOUND
    image_type = _image_type(ds)
    if (
        sop_class in _SC_CLASSES
        or _text(ds, "ConversionType")
        or ("SECONDARY" in image_type and image_type & _SCREEN_IMAGE_TYPES)
    ):
        return QuarantineReason.SECONDARY_CAPTURE
    return None


def matching_rule(ds: pydicom.Dataset, rules: tuple[PixelCleanRule, ...]) -> PixelCleanRule | None:
    """The first rule whose manufacturer, model, rows and columns match ``ds``."""
    manufacturer = str(ds.get("Manufacturer", "") or "").strip()
    model = str(ds.get("ManufacturerModelName", "") or "").strip()
    rows, columns = ds.get("Rows"), ds.get("Columns")
    for rule in rules:
        if (rule.manufacturer.strip(), rule.model.strip(), rule.rows, rule.columns) == (
            manufacturer, model, rows, columns,
        ):
            return rule
    return None


def blank(ds: pydicom.Dataset, rule: PixelCleanRule) -> None:
    """Set the rule's regions to 0 in every frame and sample, in place.

    Compressed pixel data is decoded and stored again as Explicit VR Little Endian.
    Raises on any decoding problem; the caller quarantines.
    """
    if "PixelData" not in ds or int(ds.get("BitsAllocated", 0)) not in (8, 16, 32):
        raise ValueError("pixel data missing or with an unsupported bit depth")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is not None and syntax.is_compressed:
        ds.decompress(generate_instance_uid=False)
    arr = np.array(ds.pixel_array, copy=True)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    for r0, c0, r1, c1 in rule.regions:
        if frames > 1:
            arr[:, r0:r1, c0:c1, ...] = 0
        else:
            arr[r0:r1, c0:c1, ...] = 0
    photometric = str(ds.PhotometricInterpretation)
    if photometric.startswith("YBR") and arr.ndim >= 3 and arr.shape[-1] == 3:
        photometric = "RGB"  # pydicom returned RGB for uncompressed YBR data
    ds.set_pixel_data(arr, photometric, int(ds.BitsStored), generate_instance_uid=False)
    if hasattr(ds, "file_meta"):
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.BurnedInAnnotation = "NO"
