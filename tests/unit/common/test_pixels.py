"""The pixel pipeline against pydicom's real test files (pydicom + pydicom-data)."""

import collections
import copy
import io
import math
import pickle
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_windowing
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from common.pixels import REASONS, ImageRefused, PixelPipeline, load_dataset, window


def _path(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing"
    return path


def _ds(name: str) -> Dataset:
    return load_dataset(_path(name))


def _block_mean(image: np.ndarray, size: int) -> np.ndarray:
    """Area resampling by hand for a square image whose side is a multiple of size."""
    k = image.shape[0] // size
    return image.reshape(size, k, size, k).mean(axis=(1, 3))


def _linear(x, center, width):
    """PS3.3 C.11.2.1.2.1 written out with y_min = 0, y_max = 1."""
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _voi_only(**attrs) -> Dataset:
    ds = Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


# ---------------------------------------------------------------------- contract


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small.dcm", "RG1_J2KR.dcm", "JPEG2000.dcm", "image_dfl.dcm",
     "JPGLosslessP14SV1_1s_1f_8b.dcm", "rtdose_1frame.dcm", "liver_1frame.dcm"],
)
@pytest.mark.parametrize("size", [8, 32, 64, 96])
def test_output_is_float32_square_in_unit_range(name, size):
    out = PixelPipeline(size=size)(_ds(name))
    assert out.shape == (size, size)
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.max() > out.min()  # a real image, not a constant


@pytest.mark.parametrize("size", [7, 0, -64, 64.0, "64", True, None])
def test_size_is_validated(size):
    with pytest.raises(ValueError, match="integer >= 8"):
        PixelPipeline(size=size)


def test_pipeline_is_frozen_config_and_leaves_the_dataset_alone():
    pipe = PixelPipeline(size=32)
    with pytest.raises(AttributeError):
        pipe.size = 16  # type: ignore[misc]
    ds = _ds("CT_small.dcm")
    before = copy.deepcopy(ds)
    first = pipe(ds)
    assert ds == before
    assert np.array_equal(first, pipe(ds))


# ------------------------------------------------- transfer syntaxes agree


@pytest.mark.parametrize(
    "reference, encoded",
    [
        ("MR_small.dcm", "MR_small_RLE.dcm"),  # RLE lossless
        ("MR_small.dcm", "MR_small_bigendian.dcm"),  # explicit big endian
        ("MR_small.dcm", "MR_small_expb.dcm"),
        ("MR_small.dcm", "MR_small_implicit.dcm"),  # implicit little endian
        ("MR_small.dcm", "MR_small_jp2klossless.dcm"),  # JPEG 2000 lossless
        ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),  # JPEG-LS lossless
        ("MR_small.dcm", "MR_small_padded.dcm"),
        ("693_UNCR.dcm", "693_J2KR.dcm"),  # CT, 512 x 512
        ("MR2_UNCR.dcm", "MR2_J2KR.dcm"),  # MR, 1024 x 1024
        ("RG1_UNCR.dcm", "RG1_J2KR.dcm"),  # CR, MONOCHROME1, not square
        ("RG3_UNCR.dcm", "RG3_J2KR.dcm"),  # CR, MONOCHROME1
        # *_UNCI is the decompressed lossy image, so these must agree exactly too
        ("693_UNCI.dcm", "693_J2KI.dcm"),
        ("RG1_UNCI.dcm", "RG1_J2KI.dcm"),
        ("JPEG2000_UNC.dcm", "JPEG2000.dcm"),
    ],
)
@pytest.mark.filterwarnings("ignore:The pixel data is .* excess padding")
def test_lossless_encodings_give_identical_outputs(reference, encoded):
    pipe = PixelPipeline(size=64)
    expected = pipe(_ds(reference))
    np.testing.assert_allclose(pipe(_ds(encoded)), expected, rtol=0, atol=1e-6)


def test_jpeg_extended_lossy_is_close_to_jpeg_lossless_of_the_same_image():
    pipe = PixelPipeline(size=64)
    lossless = pipe(_ds("JPEG-LL.dcm"))  # JPEG lossless, process 14 SV1
    lossy = pipe(_ds("JPGExtended.dcm"))  # JPEG extended, process 2 & 4, 12-bit
    assert np.abs(lossy - lossless).mean() < 0.005
    assert np.abs(lossy - lossless).max() < 0.05


def test_deflated_file_matches_its_uncompressed_rewrite():
    deflated = _ds("image_dfl.dcm")
    assert deflated.file_meta.TransferSyntaxUID.name == "Deflated Explicit VR Little Endian"
    plain = copy.deepcopy(deflated)
    plain.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    plain.save_as(buffer, enforce_file_format=True)
    pipe = PixelPipeline(size=64)
    np.testing.assert_array_equal(pipe(load_dataset(buffer.getvalue())), pipe(deflated))


# ------------------------------------------------------------- known values


def test_ct_rescale_and_header_window_match_a_hand_computation():
    ds = _ds("CT_small.dcm")
    assert (ds.RescaleSlope, ds.RescaleIntercept) == (1, -1024)
    ds.WindowCenter, ds.WindowWidth = 40, 400  # a soft-tissue window in HU
    raw = ds.pixel_array.astype(np.float64)
    hu = raw * 1.0 - 1024.0
    # one pixel by hand: stored 1928 -> 904 HU -> above c + w/2 -> white
    assert raw[64, 64] == 1928 and _linear(hu[64, 64], 40, 400) == 1.0
    # a pixel on the ramp: HU in (-160, 240) maps to (HU - 39.5) / 399 + 0.5
    r, c = np.argwhere((hu > -150) & (hu < 230))[0]
    assert math.isclose(window(hu, ds)[r, c], (hu[r, c] - 39.5) / 399 + 0.5, abs_tol=1e-12)
    out = PixelPipeline(size=64)(ds)  # 128 -> 64: 2 x 2 area averages
    np.testing.assert_allclose(out, _block_mean(_linear(hu, 40, 400), 64), atol=1e-6)


def test_without_a_window_the_robust_percentile_window_is_used():
    ds = _ds("CT_small.dcm")
    assert "WindowCenter" not in ds and "VOILUTSequence" not in ds
    hu = ds.pixel_array.astype(np.float64) - 1024.0
    low, high = np.percentile(hu, [0.5, 99.5])
    expected = np.clip((hu - low) / (high - low), 0, 1)
    np.testing.assert_allclose(window(hu, ds), expected, atol=1e-12)
    np.testing.assert_allclose(PixelPipeline(size=32)(ds), _block_mean(expected, 32), atol=1e-6)


def test_monochrome1_is_inverted_against_a_hand_computation():
    ds = _ds("RG3_UNCR.dcm")  # CR, MONOCHROME1, 1760 x 1760, no rescale
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (550.0, 1024.0)
    raw = ds.pixel_array.astype(np.float64)
    expected = 1.0 - _linear(raw, 550, 1024)  # stored 0 is white in MONOCHROME1
    out = PixelPipeline(size=32)(ds)  # 1760 = 32 x 55
    np.testing.assert_allclose(out, _block_mean(expected, 32), atol=1e-5)
    assert raw[:55, :55].max() == 0 and out[0, 0] == 1.0  # a stored-0 corner is bright


def test_monochrome1_output_is_one_minus_monochrome2_output():
    pipe = PixelPipeline(size=64)
    mono2 = _ds("MR_small.dcm")
    mono1 = _ds("MR_small.dcm")
    mono1.PhotometricInterpretation = "MONOCHROME1"
    a, b = pipe(mono2), pipe(mono1)
    assert not np.allclose(a, b)
    np.testing.assert_allclose(b, 1.0 - a, atol=1e-6)


def test_modality_lut_sequence_is_applied():
    ds = _ds("mlut_18.dcm")  # Modality LUT: 4096 entries, first mapped -2048
    item = ds.ModalityLUTSequence[0]
    assert list(item.LUTDescriptor) == [4096, -2048, 16] and "RescaleSlope" not in ds
    lut = np.asarray(item.LUTData, dtype=np.float64)
    raw = ds.pixel_array.astype(np.int64)
    values = lut[np.clip(raw + 2048, 0, 4095)]
    low, high = np.percentile(values, [0.5, 99.5])
    expected = np.clip((values - low) / (high - low), 0, 1)
    out = PixelPipeline(size=256)(ds)  # 512 -> 256
    np.testing.assert_allclose(out, _block_mean(expected, 256), atol=1e-5)


def test_voi_lut_sequence_is_applied_and_preferred_to_a_window():
    ds = _ds("vlut_04.dcm")  # VOI LUT: 256 entries, first mapped 0, 16 bits out
    item = ds.VOILUTSequence[0]
    assert list(item.LUTDescriptor) == [256, 0, 16]
    raw = ds.pixel_array.astype(np.int64)
    expected = np.asarray(item.LUTData, dtype=np.float64)[np.clip(raw, 0, 255)] / 65535
    np.testing.assert_allclose(window(raw, ds), expected, atol=1e-12)
    ds.WindowCenter, ds.WindowWidth = 10, 20  # would saturate almost everything
    np.testing.assert_allclose(window(raw, ds), expected, atol=1e-12)


# ------------------------------------------------------------- VOI functions


LINEAR_CASES = [  # center 100, width 21 -> ramp over (89.5, 109.5]
    (-1e9, 0.0), (89.0, 0.0), (89.5, 0.0), (89.6, 0.005), (99.5, 0.5),
    (109.4, 0.995), (109.5, 1.0), (110.0, 1.0), (1e9, 1.0),
]


@pytest.mark.parametrize("x, y", LINEAR_CASES)
def test_linear_window_at_the_standards_boundaries(x, y):
    ds = _voi_only(WindowCenter=100, WindowWidth=21)
    assert window(np.array([x]), ds)[0] == pytest.approx(y, abs=1e-12)


@pytest.mark.parametrize(
    "x, y", [(80.0, 0.0), (90.0, 0.0), (95.0, 0.25), (100.0, 0.5), (110.0, 1.0), (111.0, 1.0)]
)
def test_linear_exact_window(x, y):
    ds = _voi_only(WindowCenter=100, WindowWidth=20, VOILUTFunction="LINEAR_EXACT")
    assert window(np.array([x]), ds)[0] == pytest.approx(y, abs=1e-12)


@pytest.mark.parametrize("x", [-1e12, 90.0, 100.0, 110.0, 1e12])
def test_sigmoid_window(x):
    ds = _voi_only(WindowCenter=100, WindowWidth=20, VOILUTFunction="SIGMOID")
    z = -4 * (x - 100) / 20
    expected = 0.0 if z > 700 else 1.0 / (1.0 + math.exp(z))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow at the extremes
        assert window(np.array([x]), ds)[0] == pytest.approx(expected, abs=1e-12)


def test_width_one_linear_is_a_step_at_center_minus_half():
    ds = _voi_only(WindowCenter=100, WindowWidth=1)
    assert list(window(np.array([99.0, 99.5, 99.6, 100.0]), ds)) == [0.0, 0.0, 1.0, 1.0]


def test_first_of_multiple_windows_is_used():
    ds = _voi_only(WindowCenter=[100, 5000], WindowWidth=[21, 10])
    assert window(np.array([99.5]), ds)[0] == pytest.approx(0.5)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("center, width", [(1000.0, 301.0), (32768.0, 2.0), (12.5, 1.0e4)])
def test_window_agrees_with_pydicom_apply_windowing(function, center, width):
    x = np.arange(0, 65536, 3, dtype=np.float64)
    ds = _voi_only(
        WindowCenter=[center, 7.0], WindowWidth=[width, 3.0], VOILUTFunction=function,
        BitsStored=16, PixelRepresentation=0, PhotometricInterpretation="MONOCHROME2",
    )
    with np.errstate(over="ignore"):  # pydicom's sigmoid overflows to exactly 0
        oracle = apply_windowing(x.copy(), ds) / 65535.0  # y in [0, 2**16 - 1]
    np.testing.assert_allclose(window(x, ds), oracle, atol=1e-9)


@pytest.mark.parametrize(
    "attrs",
    [
        {"WindowCenter": 100, "WindowWidth": 0.5},  # LINEAR needs width >= 1
        {"WindowCenter": 100, "WindowWidth": 0, "VOILUTFunction": "SIGMOID"},
        {"WindowCenter": 100},  # width missing
        {"WindowCenter": "", "WindowWidth": ""},
    ],
)
def test_invalid_window_falls_back_to_the_percentile_window(attrs):
    values = np.linspace(-500, 1500, 10001)
    low, high = np.percentile(values, [0.5, 99.5])
    expected = np.clip((values - low) / (high - low), 0, 1)
    np.testing.assert_allclose(window(values, _voi_only(**attrs)), expected, atol=1e-12)


def test_constant_image_windows_to_zeros_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(window(np.full((4, 4), 7.0), Dataset()), np.zeros((4, 4)))


# ------------------------------------------------------------------- geometry


def _left_half_of_mr_small(photometric: str) -> tuple[Dataset, np.ndarray]:
    ds = _ds("MR_small.dcm")
    raw = ds.pixel_array[:, :32].copy()
    ds.PixelData = raw.tobytes()
    ds.Columns = 32
    ds.PhotometricInterpretation = photometric
    return ds, raw


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_aspect_ratio_is_kept_by_padding_with_black(photometric):
    ds, raw = _left_half_of_mr_small(photometric)  # 64 rows x 32 columns
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    image = _linear(raw.astype(np.float64), center, width)
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    out = PixelPipeline(size=64)(ds)  # padded to 64 x 64: identity resample
    assert np.all(out[:, :16] == 0) and np.all(out[:, 48:] == 0)
    np.testing.assert_allclose(out[:, 16:48], image, atol=1e-6)


def test_tall_image_is_centred_between_black_columns():
    out = PixelPipeline(size=64)(_ds("JPEG2000_UNC.dcm"))  # 1024 rows x 256 columns
    assert np.all(out[:, :24] == 0) and np.all(out[:, 40:] == 0)
    assert out[:, 24:40].max() > 0.5


def test_small_images_are_enlarged_bilinearly():
    ds = _ds("MR_small.dcm")  # 64 x 64 -> 128 x 128
    image = window(ds.pixel_array, ds)
    out = PixelPipeline(size=128)(ds)
    # half-pixel-centred bilinear at 2x: odd output k = 2i + 1 sits at input i + 1/4
    rows = 0.75 * image[:-1] + 0.25 * image[1:]
    expected = 0.75 * rows[:, :-1] + 0.25 * rows[:, 1:]
    np.testing.assert_allclose(out[1:-1:2, 1:-1:2], expected, atol=1e-6)


# -------------------------------------------------------------------- reading


def test_load_dataset_accepts_paths_and_bytes():
    path = _path("MR_small.dcm")
    data = Path(path).read_bytes()
    pipe = PixelPipeline(size=32)
    expected = pipe(load_dataset(path))
    for source in (Path(path), data, bytearray(data), memoryview(data)):
        np.testing.assert_array_equal(pipe(load_dataset(source)), expected)


@pytest.mark.parametrize(
    "name", ["README.txt", "test1.json", "zipMR.gz", "no_meta.dcm", "crayons.icc"]
)
def test_non_dicom_files_are_refused(name):
    with pytest.raises(ImageRefused) as info:
        load_dataset(_path(name))
    assert info.value.reason == "not-dicom"
    assert "DICOM Part 10" in str(info.value)


@pytest.mark.parametrize("data", [b"", b"hello, not an image", b"\0" * 128 + b"DICX" + b"\0" * 64])
def test_non_dicom_bytes_are_refused(data):
    with pytest.raises(ImageRefused) as info:
        load_dataset(data)
    assert info.value.reason == "not-dicom"


def _ct_bytes() -> bytes:
    return Path(_path("CT_small.dcm")).read_bytes()


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9, 0.99])
def test_truncated_file_is_refused_when_read(keep):
    data = _ct_bytes()
    pixel_data_at = data.rfind(b"\xe0\x7f\x10\x00")
    cut = pixel_data_at + 12 + int(keep * 32768)  # inside the 32 KiB pixel value
    with pytest.raises(ImageRefused) as info:
        load_dataset(data[:cut])
    assert info.value.reason == "corrupt"


def test_file_cut_inside_an_element_header_is_refused():
    data = _ct_bytes()
    pixel_data_at = data.rfind(b"\xe0\x7f\x10\x00")
    with pytest.raises(ImageRefused) as info:
        load_dataset(data[: pixel_data_at + 8])
    assert info.value.reason == "corrupt"


@pytest.mark.parametrize(
    "name",
    ["MR_truncated.dcm", "emri_small_jpeg_2k_lossless_too_short.dcm", "rtplan_truncated.dcm"],
)
def test_truncated_corpus_files_are_refused(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ImageRefused) as info:
            load_dataset(_path(name))
    assert info.value.reason == "corrupt"


def test_missing_file_is_an_os_error_not_a_refusal(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "absent.dcm")


# ------------------------------------------------------------------- refusals


def _refusal(ds: Dataset) -> ImageRefused:
    with pytest.raises(ImageRefused) as info:
        PixelPipeline(size=32)(ds)
    return info.value


@pytest.mark.parametrize(
    "name",
    ["SC_rgb.dcm", "SC_rgb_jpeg_dcmtk.dcm", "US1_UNCR.dcm", "US1_J2KR.dcm",
     "OBXXXX1A.dcm", "examples_palette.dcm", "SC_ybr_full_uncompressed.dcm"],
)
def test_colour_images_are_refused(name):
    refusal = _refusal(_ds(name))
    assert refusal.reason == "colour"
    assert "MONOCHROME1 or MONOCHROME2" in str(refusal)


@pytest.mark.parametrize(
    "name", ["emri_small.dcm", "emri_small_RLE.dcm", "eCT_Supplemental.dcm", "rtdose.dcm"]
)
def test_multi_frame_images_are_refused(name):
    assert _refusal(_ds(name)).reason == "multi-frame"


def test_single_frame_with_number_of_frames_one_is_accepted():
    ds = _ds("JPEG-LL.dcm")
    assert ds.NumberOfFrames == 1
    assert PixelPipeline(size=32)(ds).shape == (32, 32)


@pytest.mark.parametrize("name", ["rtplan.dcm", "test-SR.dcm", "DICOMDIR", "waveform_ecg.dcm"])
def test_objects_without_pixel_data_are_refused(name):
    assert _refusal(_ds(name)).reason == "no-pixel-data"


def test_empty_pixel_data_is_refused():
    ds = _ds("MR_small.dcm")
    ds.PixelData = b""
    assert _refusal(ds).reason == "no-pixel-data"


@pytest.mark.parametrize("keyword", ["Rows", "Columns"])
def test_zero_size_image_is_refused(keyword):
    ds = _ds("MR_small.dcm")
    setattr(ds, keyword, 0)
    assert _refusal(ds).reason == "empty-image"


def test_short_pixel_data_is_undecodable():
    ds = _ds("MR_small.dcm")
    ds.PixelData = ds.PixelData[:100]
    assert _refusal(ds).reason == "undecodable"


def test_corrupt_jpeg2000_codestream_is_undecodable():
    ds = _ds("MR_small_jp2klossless.dcm")
    assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 200])
    assert _refusal(ds).reason == "undecodable"


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2.4.100", "1.2.3.4.5.6"])  # MPEG2; private
def test_transfer_syntax_without_a_decoder_is_refused(uid):
    ds = _ds("MR_small.dcm")
    ds.file_meta.TransferSyntaxUID = uid
    refusal = _refusal(ds)
    assert refusal.reason == "unsupported-transfer-syntax"
    assert "1.2.3.4.5.6" not in str(refusal)  # private UIDs are never echoed


def test_missing_transfer_syntax_is_refused():
    ds = _ds("MR_small.dcm")
    del ds.file_meta.TransferSyntaxUID
    assert _refusal(ds).reason == "unsupported-transfer-syntax"


# ------------------------------------------------------- errors carry no PHI


SECRET_NAME = "Sentinel^Secretpatient"
SECRET_ID = "SENTINEL-ID-8842"
SECRET_UID = "1.2.826.0.1.3680043.8.498.88421234"
SECRET_DATE = "19450508"


def _with_secrets(ds: Dataset) -> Dataset:
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = SECRET_NAME, SECRET_ID, SECRET_DATE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = SECRET_UID
    return ds


def _broken(how: str) -> Dataset:
    ds = _with_secrets(_ds("MR_small.dcm"))
    if how == "no-pixel-data":
        del ds.PixelData
    elif how == "colour":
        ds.PhotometricInterpretation = "RGB"
    elif how == "multi-frame":
        ds.NumberOfFrames = 2
    elif how == "empty-image":
        ds.Rows = 0
    elif how == "undecodable":
        ds.PixelData = ds.PixelData[:100]
    elif how == "unsupported-transfer-syntax":
        ds.file_meta.TransferSyntaxUID = SECRET_UID
    return ds


def _assert_clean(refusal: ImageRefused) -> None:
    text = f"{refusal}\n{refusal!r}\n{refusal.message}"
    for secret in (SECRET_NAME, "Sentinel", SECRET_ID, SECRET_UID, SECRET_DATE):
        assert secret not in text
    assert refusal.__cause__ is None  # no foreign exception text chained on
    assert refusal.__suppress_context__ or refusal.__context__ is None
    assert refusal.reason in REASONS and str(refusal).startswith(f"{refusal.reason}: ")


@pytest.mark.parametrize(
    "how", ["no-pixel-data", "colour", "multi-frame", "empty-image", "undecodable",
            "unsupported-transfer-syntax"],
)
def test_pipeline_refusals_never_quote_header_values(how):
    refusal = _refusal(_broken(how))
    assert refusal.reason == how
    _assert_clean(refusal)


def test_read_refusals_never_quote_header_values():
    buffer = io.BytesIO()
    _with_secrets(_ds("MR_small.dcm")).save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    pixel_data_at = data.rfind(b"\xe0\x7f\x10\x00")
    cases = {
        "corrupt": [data[:-500], data[: pixel_data_at + 8]],  # in a value; in a header
        "not-dicom": [data[132:]],  # no preamble: text with the secrets in it
    }
    for reason, sources in cases.items():
        for source in sources:
            with pytest.raises(ImageRefused) as info:
                load_dataset(source)
            assert info.value.reason == reason
            _assert_clean(info.value)


def test_refusal_is_a_value_error_that_survives_pickling():
    refusal = ImageRefused("colour", "only greyscale")
    assert isinstance(refusal, ValueError)
    again = pickle.loads(pickle.dumps(refusal))
    assert (again.reason, str(again)) == ("colour", "colour: only greyscale")
    with pytest.raises(ValueError, match="unknown refusal reason"):
        ImageRefused("spooky", "x")


# ---------------------------------------------------------------------- sweep


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore")
def test_every_corpus_file_is_accepted_or_refused_with_a_reason():
    pipe = PixelPipeline(size=32)
    outcomes: dict[str, str] = {}
    start = time.monotonic()
    for path in get_testdata_files():
        if not Path(path).is_file():
            continue  # get_testdata_files() also lists a few directories
        try:
            out = pipe(load_dataset(path))
        except ImageRefused as refusal:
            assert refusal.reason in REASONS
            outcomes[path] = refusal.reason
            continue
        assert out.shape == (32, 32) and out.dtype == np.float32, path
        assert np.all((out >= 0) & (out <= 1)), path
        outcomes[path] = "accepted"
    assert time.monotonic() - start < 60
    counts = collections.Counter(outcomes.values())
    assert counts["accepted"] >= 70, counts
    for reason in ("not-dicom", "corrupt", "no-pixel-data", "colour", "multi-frame"):
        assert counts[reason] > 0, counts
    by_name = {Path(p).name: r for p, r in outcomes.items()}
    expected = {
        "CT_small.dcm": "accepted", "MR_small_RLE.dcm": "accepted", "RG1_J2KI.dcm": "accepted",
        "JPEGLSNearLossless_16.dcm": "accepted", "image_dfl.dcm": "accepted",
        "SC_rgb_jpeg.dcm": "colour", "emri_small.dcm": "multi-frame", "rtplan.dcm": "no-pixel-data",
        "MR_truncated.dcm": "corrupt", "README.txt": "not-dicom",
    }
    assert {name: by_name[name] for name in expected} == expected
