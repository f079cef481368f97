"""Site imaging profiles: how one synthetic hospital's X-ray equipment differs from another's.

A profile is drawn deterministically from (seed, site_index) by sampling from the lists
below, so any number of sites works and sites are non-IID (vendor, photometric
interpretation, bit depth, rescale, window, pixel spacing, matrix, noise, processing,
collimation, laterality marker, prevalence, age and sex mix, view mix, follow-up rate).

Matrix sizes are deliberately moderate for speed: 320-640 pixels per side (not square
in general) over a 350-430 mm field of view, so PixelSpacing is 0.60-1.20 mm instead of
a real detector's 0.1-0.2 mm.
"""
from __future__ import annotations

from dataclasses import dataclass

from common.synth.seeding import rng_for

MIN_MATRIX, MAX_MATRIX = 320, 640
MIN_FOV_MM, MAX_FOV_MM = 350.0, 430.0


@dataclass(frozen=True)
class Vendor:
    """A (fictitious) manufacturer and what its exports look like."""

    manufacturer: str
    models: tuple[str, ...]
    modality: str  # "CR" or "DX"
    private_creator: str
    software: str
    monochrome1_rate: float


VENDORS: tuple[Vendor, ...] = (
    Vendor("ACME MEDICAL", ("ACME DR-7000", "ACME DR-5500"), "DX", "ACME MEDICAL 1.0", "DR7 4.2.1", 0.2),
    Vendor("NORTHWIND IMAGING", ("NW CR-100", "NW CR-Capsule"), "CR", "NORTHWIND CR 2.1", "CRC V3.08", 0.7),
    Vendor("KESTREL HEALTHCARE", ("Vista DRX", "Vista DRX Plus"), "DX", "KESTREL DX 01", "5.7.412", 0.3),
    Vendor("ORION RADIOLOGY SYSTEMS", ("Orion CR 35-X",), "CR", "ORION_CR_PRIVATE", "OR-CR 2.0.14", 0.6),
    Vendor("HELIX DIAGNOSTICS", ("Helix Diagnost C90", "Helix Diagnost C70"), "DX", "HELIX XRAY 3", "HX 1.9.2", 0.1),
    Vendor("BOREAL X-RAY", ("BorealScan 500",), "CR", "BOREAL CR 1.0", "BS500-1.22", 0.5),
    Vendor("TANAGER SYSTEMS", ("Tanager Definium 6x", "Tanager Discovery 2"), "DX", "TANAGER_IIS", "dm_Platform 3.1", 0.4),
    Vendor("MERIDIAN MEDICAL", ("Meridian Ysio Max",), "DX", "MERIDIAN MED XR", "VF10C", 0.2),
)

BITS_STORED = (10, 12, 12, 14, 16)
CR_RESCALES = ((1.0, 0.0), (1.0, 0.0), (0.5, 0.0), (2.0, 0.0), (1.0, -1024.0), (0.25, 100.0))
PIXEL_SPACINGS_MM = (0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 1.0, 1.1, 1.2)
MARKERS = (("L", "top-right"), ("R", "top-left"), ("L", "bottom-right"), ("R", "bottom-left"))


@dataclass(frozen=True)
class SiteProfile:
    """The imaging side of one synthetic hospital (identities live in `people`)."""

    site_index: int
    manufacturer: str
    model: str
    software_version: str
    modality: str
    private_creator: str
    photometric: str
    bits_stored: int
    rescale_slope: float
    rescale_intercept: float
    stored_range: tuple[float, float]  # fraction of the full scale used for attenuation 0 and 1
    window_range: tuple[float, float]  # attenuation range that the default window shows
    pixel_spacing_mm: float
    rows: int
    columns: int
    noise: float
    gamma: float
    edge_enhance: float
    collimation_mm: tuple[float, float, float, float]  # top, bottom, left, right
    collimation_fill: float  # shown outside the collimated field: 0 = electronic shutter (black)
    marker: str
    marker_corner: str
    marker_height_mm: float
    prevalence: float
    mean_age: float
    age_sd: float
    female_rate: float
    ap_rate: float
    study_count_weights: tuple[float, float, float]  # P(1, 2, 3 studies per patient)
    default_patients: int


def sample_profile(*, seed: int, site_index: int) -> SiteProfile:
    """The profile of site `site_index` for `seed` (deterministic)."""
    rng = rng_for(seed, site_index, "profile")
    vendor = VENDORS[int(rng.integers(len(VENDORS)))]
    model = vendor.models[int(rng.integers(len(vendor.models)))]
    photometric = "MONOCHROME1" if rng.random() < vendor.monochrome1_rate else "MONOCHROME2"
    bits = int(BITS_STORED[int(rng.integers(len(BITS_STORED)))])
    if vendor.modality == "CR":
        slope, intercept = CR_RESCALES[int(rng.integers(len(CR_RESCALES)))]
    else:  # DX For Presentation: the DX Image module fixes slope 1, intercept 0
        slope, intercept = 1.0, 0.0
    spacing = float(PIXEL_SPACINGS_MM[int(rng.integers(len(PIXEL_SPACINGS_MM)))])
    fov_low = max(MIN_FOV_MM, MIN_MATRIX * spacing)
    fov_high = min(MAX_FOV_MM, MAX_MATRIX * spacing)
    rows = int(round(rng.uniform(max(fov_low, 370.0), fov_high) / spacing))
    columns = int(round(rng.uniform(fov_low, fov_high) / spacing))
    rows, columns = (min(MAX_MATRIX, max(MIN_MATRIX, n)) for n in (rows, columns))
    collimation = tuple(
        float(rng.uniform(3.0, 20.0)) if rng.random() < 0.6 else 0.0 for _ in range(4)
    )
    marker, corner = MARKERS[int(rng.integers(len(MARKERS)))]
    single = float(rng.uniform(0.25, 0.5))
    triple = float(rng.uniform(0.15, 0.35))
    return SiteProfile(
        site_index=site_index,
        manufacturer=vendor.manufacturer,
        model=model,
        software_version=vendor.software,
        modality=vendor.modality,
        private_creator=vendor.private_creator,
        photometric=photometric,
        bits_stored=bits,
        rescale_slope=slope,
        rescale_intercept=intercept,
        stored_range=(float(rng.uniform(0.0, 0.06)), float(rng.uniform(0.8, 1.0))),
        window_range=(float(rng.uniform(0.02, 0.1)), float(rng.uniform(0.72, 0.9))),
        pixel_spacing_mm=spacing,
        rows=rows,
        columns=columns,
        noise=float(rng.uniform(0.006, 0.025)),
        gamma=float(rng.uniform(0.85, 1.2)),
        edge_enhance=float(rng.uniform(0.0, 0.8)),
        collimation_mm=collimation,  # type: ignore[arg-type]
        collimation_fill=0.0 if rng.random() < 0.7 else float(rng.uniform(0.75, 0.9)),
        marker=marker,
        marker_corner=corner,
        marker_height_mm=float(rng.uniform(10.0, 20.0)),
        prevalence=float(rng.uniform(0.2, 0.5)),
        mean_age=float(rng.uniform(45.0, 68.0)),
        age_sd=float(rng.uniform(10.0, 18.0)),
        female_rate=float(rng.uniform(0.35, 0.65)),
        ap_rate=float(rng.uniform(0.0, 0.35)),
        study_count_weights=(single, 1.0 - single - triple, triple),
        default_patients=int(rng.integers(60, 121)),
    )
