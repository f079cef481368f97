"""The pixel pipeline: one greyscale DICOM image -> a float32 model input.

Steps, in order (PS3.3 C.11 / PS3.4 N.2 grayscale pipeline):

1. decode the stored values (any transfer syntax pydicom and its plugins can decode);
2. Modality LUT: Rescale Slope/Intercept or a Modality LUT Sequence;
3. VOI: a VOI LUT Sequence, else Window Center/Width (first value) with the VOI LUT
   Function, else a robust window from the 0.5th-99.5th percentiles; output in [0, 1];
4. MONOCHROME1 is inverted, so that the output always reads high = bright;
5. the shorter side is padded with 0 (black) to a square, centred;
6. the square is resampled to ``size x size`` (area averaging when shrinking,
   bilinear when enlarging) and returned as float32 in [0, 1].

Anything the pipeline cannot turn into a faithful greyscale input is refused with
:class:`ImageRefused`, whose ``reason`` is a stable short code. Messages name the kind
of problem, the rule and the fix; they never quote header values or foreign exception
text, so they are safe to log at a site.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass
from os import PathLike

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi, get_decoder, pixel_array

__all__ = ["REASONS", "ImageRefused", "PixelPipeline", "load_dataset", "window"]

REASONS = frozenset(
    {
        "not-dicom",
        "corrupt",
        "no-pixel-data",
        "colour",
        "multi-frame",
        "undecodable",
        "unsupported-transfer-syntax",
        "empty-image",
    }
)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_GREYSCALE = ("MONOCHROME1", "MONOCHROME2")
_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
_UNDEFINED_LENGTH = 0xFFFFFFFF


class ImageRefused(ValueError):
    """An image the pipeline cannot turn into a model input.

    ``reason`` is one of :data:`REASONS`; ``str(exc)`` is ``"<reason>: <message>"``.
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}; use one of {sorted(REASONS)}")
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


# --------------------------------------------------------------------------- reading


def load_dataset(source: str | PathLike[str] | bytes | bytearray | memoryview) -> Dataset:
    """Read a DICOM Part 10 file from a path, or from its raw bytes.

    Bytes-like input is the file's *content*, never a path. Raises ImageRefused
    ("not-dicom") for anything without a DICOM preamble and file meta, and
    ("corrupt") for a file that cannot be parsed or ends inside a data element.
    OS errors (missing file, a directory, permissions) propagate unchanged.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    try:
        ds = pydicom.dcmread(source, force=False)
    except InvalidDicomError:
        raise ImageRefused(
            "not-dicom",
            "the file is not a DICOM Part 10 file (no 128-byte preamble and 'DICM' "
            "prefix, or unreadable file meta); export it from PACS as DICOM Part 10",
        ) from None
    except (OSError, MemoryError):
        raise
    except Exception as exc:  # pydicom's parser raises many types on malformed input
        raise _corrupt(f"it cannot be parsed ({_kind(exc)})") from None
    _check_complete(ds)
    return ds


def _kind(exc: BaseException) -> str:
    """An exception's qualified type name: safe to show, unlike its message."""
    module = type(exc).__module__
    name = type(exc).__qualname__
    return name if module == "builtins" else f"{module}.{name}"


def _corrupt(what: str) -> ImageRefused:
    return ImageRefused(
        "corrupt",
        f"the DICOM file is corrupt or truncated: {what}; re-export or re-transfer it",
    )


def _check_complete(ds: Dataset) -> None:
    """Refuse a data set that is empty or whose top-level values were cut short."""
    if len(ds) == 0:
        raise _corrupt("it has file meta but no data set")
    for tag in ds.keys():
        raw = ds.get_item(tag)
        if not isinstance(raw, RawDataElement) or raw.length == _UNDEFINED_LENGTH:
            continue
        if raw.value is not None and len(raw.value) < raw.length:
            raise _corrupt("the file ends inside a data element")


# ----------------------------------------------------------------------- the pipeline


@dataclass(frozen=True)
class PixelPipeline:
    """DICOM data set -> float32 ``(size, size)`` array in [0, 1], MONOCHROME2 semantics."""

    size: int = 64

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 8:
            raise ValueError(
                f"PixelPipeline.size must be an integer >= 8, got {self.size!r}; "
                "set the model input size (e.g. 64)"
            )

    def __call__(self, ds: Dataset) -> np.ndarray:
        values = _modality(_decode(ds), ds)
        square, image = _square_canvas(values.shape)
        window(values, ds, out=image)  # straight into the padded square: no copies
        if _photometric(ds) == "MONOCHROME1":
            np.subtract(1.0, image, out=image)
        return _resize(square, self.size)


def _decode(ds: Dataset) -> np.ndarray:
    """Check the image is a single greyscale frame, then decode its stored values."""
    _check_pixel_data(ds)
    rows, columns = _check_geometry(ds)
    _check_greyscale(ds)
    _check_single_frame(ds)
    _check_transfer_syntax(ds)
    try:
        arr = pixel_array(ds, index=0)
    except MemoryError:
        raise
    except Exception as exc:  # decoders raise many types on bad or short data
        raise _undecodable(f"decoding failed ({_kind(exc)})") from None
    if arr.shape != (rows, columns):
        raise _undecodable("the decoded frame does not match Rows x Columns")
    return arr


def _undecodable(what: str) -> ImageRefused:
    return ImageRefused(
        "undecodable",
        f"the pixel data cannot be decoded: {what}; check the image is intact and its "
        "image pixel attributes are consistent, or re-export it uncompressed",
    )


def _check_pixel_data(ds: Dataset) -> None:
    present = [kw for kw in _PIXEL_KEYWORDS if kw in ds]
    if not present or ds[present[0]].value in (None, b""):
        raise ImageRefused(
            "no-pixel-data",
            "the data set has no pixel data (e.g. a report, DICOMDIR or "
            "structured document); only image objects can be used",
        )
    if len(present) > 1:
        raise _undecodable("more than one pixel data element is present")


def _check_geometry(ds: Dataset) -> tuple[int, int]:
    rows, columns = _int_attr(ds, "Rows"), _int_attr(ds, "Columns")
    if rows is None or columns is None:
        raise _undecodable("Rows or Columns is missing or not an integer")
    if rows <= 0 or columns <= 0:
        raise ImageRefused(
            "empty-image",
            "the image has zero rows or columns; it contains no pixels to learn from",
        )
    return rows, columns


def _check_greyscale(ds: Dataset) -> None:
    samples = _int_attr(ds, "SamplesPerPixel")
    if samples != 1 or _photometric(ds) not in _GREYSCALE:
        raise ImageRefused(
            "colour",
            "only greyscale images are supported (SamplesPerPixel 1 and Photometric "
            "Interpretation MONOCHROME1 or MONOCHROME2); colour and palette images "
            "(RGB, YBR_*, PALETTE COLOR) must be excluded or converted at the source",
        )


def _check_single_frame(ds: Dataset) -> None:
    if ds.get("NumberOfFrames") in (None, ""):
        return
    frames = _int_attr(ds, "NumberOfFrames")
    if frames is None:
        raise _undecodable("NumberOfFrames is not an integer")
    if frames > 1:
        raise ImageRefused(
            "multi-frame",
            "multi-frame images (NumberOfFrames > 1) are not supported; the model "
            "takes one 2-D image: split the series into single-frame instances",
        )


def _check_transfer_syntax(ds: Dataset) -> None:
    tsyntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if not tsyntax:
        raise ImageRefused(
            "unsupported-transfer-syntax",
            "the file meta has no Transfer Syntax UID, so the pixel encoding is "
            "unknown; re-export the image as DICOM Part 10",
        )
    # A standard UID's name is public vocabulary; a private UID is never echoed.
    name = tsyntax.name if tsyntax.name != str(tsyntax) else "a private or unknown syntax"
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise ImageRefused(
            "unsupported-transfer-syntax",
            f"no pixel decoder exists for the transfer syntax ({name}); re-export the "
            "image uncompressed or with a standard compression",
        ) from None
    if not decoder.is_available:
        raise ImageRefused(
            "unsupported-transfer-syntax",
            f"the transfer syntax ({name}) needs a decoder plugin that is not installed; "
            f"install one of: {'; '.join(decoder.missing_dependencies)}",
        )


def _modality(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values -> modality values (float64), via pydicom's Modality LUT."""
    try:
        values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    except MemoryError:
        raise
    except Exception as exc:
        raise _undecodable(f"the Modality LUT or rescale is malformed ({_kind(exc)})") from None
    if not np.isfinite(values).all():
        raise _undecodable("pixel values include NaN or infinity")
    return values


# ------------------------------------------------------------------------------ VOI


def window(values: np.ndarray, ds: Dataset, *, out: np.ndarray | None = None) -> np.ndarray:
    """Apply the VOI transform to modality values; return float64 in [0, 1] (in ``out``,
    a float64 array of the same shape, when given).

    Precedence: the first VOI LUT Sequence item; else the first Window Center/Width
    with the VOI LUT Function (LINEAR when absent or unknown); else the robust
    0.5th-99.5th percentile window. A malformed LUT or an invalid width falls through
    to the next rule.
    """
    values = np.asarray(values, dtype=np.float64)
    if out is None:
        out = np.empty_like(values)
    mapped = _voi_lut(values, ds)
    if mapped is not None:
        return np.clip(mapped, 0.0, 1.0, out=out)
    params = _window_params(ds)
    if params is None:
        return _percentile_window(values, out)
    return _voi_function(values, *params, out)  # already clipped to [0, 1]


def _voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """The first VOI LUT, scaled by its declared output range; None if absent/malformed."""
    try:
        seq = ds.get("VOILUTSequence")
        if not seq:
            return None
        bits = int(seq[0].LUTDescriptor[2])
        if bits != 8 and not 10 <= bits <= 16:
            return None
        mapped = apply_voi(np.rint(values).astype(np.int64), ds, index=0)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError,
            NotImplementedError, struct.error):
        return None
    return mapped.astype(np.float64) / float(2**bits - 1)


def _window_params(ds: Dataset) -> tuple[float, float, str] | None:
    """(center, width, function) from the header, or None when absent or invalid."""
    center = _first_number(ds.get("WindowCenter"))
    width = _first_number(ds.get("WindowWidth"))
    if center is None or width is None:
        return None
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in _VOI_FUNCTIONS:
        function = "LINEAR"
    if width < 1 if function == "LINEAR" else width <= 0:
        return None
    return center, width, function


def _voi_function(x: np.ndarray, center: float, width: float, function: str, out: np.ndarray) -> np.ndarray:
    """PS3.3 C.11.2.1.2 / C.11.2.1.3 with y_min = 0 and y_max = 1, computed in ``out``."""
    if function == "SIGMOID":
        # 1 / (1 + exp(-4 (x - c) / w)), written with tanh so it cannot overflow
        np.subtract(x, center, out=out)
        np.multiply(2.0, out, out=out)
        np.divide(out, width, out=out)
        np.tanh(out, out=out)
        np.add(1.0, out, out=out)
        return np.multiply(0.5, out, out=out)
    if function == "LINEAR" and width == 1:  # LINEAR with an empty ramp is a step at c - 0.5
        out[...] = x > center - 0.5
        return out
    if function == "LINEAR_EXACT":
        np.subtract(x, center, out=out)
        np.divide(out, width, out=out)
    else:
        np.subtract(x, center - 0.5, out=out)
        np.divide(out, width - 1, out=out)
    np.add(out, 0.5, out=out)
    return np.clip(out, 0.0, 1.0, out=out)


def _percentile_window(values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Linear window over the 0.5th-99.5th percentiles (min-max if they coincide), in ``out``."""
    low, high = np.percentile(values, [0.5, 99.5])
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        out[...] = 0.0
        return out
    np.subtract(values, low, out=out)
    np.divide(out, high - low, out=out)
    return np.clip(out, 0.0, 1.0, out=out)


# ---------------------------------------------------------------------- geometry


def _square_canvas(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A square of zeros (black) whose side is the longer side, and the centred view
    of it where an image of ``shape`` goes."""
    rows, columns = shape
    side = max(rows, columns)
    square = np.zeros((side, side), dtype=np.float64)
    top, left = (side - rows) // 2, (side - columns) // 2
    return square, square[top : top + rows, left : left + columns]


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Square image -> float32 (size, size): area averaging to shrink, bilinear to enlarge.

    Resampling runs in float64 so that large averaging areas lose no precision.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64))[None, None]
    if image.shape[0] >= size:
        out = F.interpolate(tensor, size=(size, size), mode="area")
    else:
        out = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)
    return np.clip(out[0, 0].numpy(), 0.0, 1.0).astype(np.float32, copy=False)


# ------------------------------------------------------------------ header access


def _photometric(ds: Dataset) -> str:
    return str(ds.get("PhotometricInterpretation") or "").strip().upper()


def _int_attr(ds: Dataset, keyword: str) -> int | None:
    """An integer attribute, or None when missing, empty or not an integer."""
    value = _first_number(ds.get(keyword))
    return int(value) if value is not None and value == int(value) else None


def _first_number(value: object) -> float | None:
    """The first value of a (multi-valued) numeric attribute as a finite float."""
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
