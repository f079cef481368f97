"""A site's detector and image processing: from phantom attenuation to stored pixels.

Edge enhancement and gamma (the vendor's processing), resampling to the site's matrix,
quantum noise, collimation borders, the burned-in lead laterality marker, and
quantisation into BitsStored with the site's photometric interpretation.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from common.synth.profiles import SiteProfile

_GLYPHS = {
    "L": ("X....", "X....", "X....", "X....", "X....", "X....", "XXXXX"),
    "R": ("XXXX.", "X...X", "X...X", "XXXX.", "X.X..", "X..X.", "X...X"),
}
MARKER_VALUE = 0.97


def processing(attenuation: np.ndarray, profile: SiteProfile) -> np.ndarray:
    """The vendor's look: unsharp masking then a gamma curve (still in [0, 1])."""
    a = attenuation
    if profile.edge_enhance > 0:
        a = a + profile.edge_enhance * (a - ndimage.gaussian_filter(a, sigma=3.0))
    return np.clip(a, 0.0, 1.0) ** profile.gamma


def acquire(attenuation: np.ndarray, profile: SiteProfile, rng: np.random.Generator) -> np.ndarray:
    """Stored pixel values (uint16, rows x columns) for a working-grid attenuation image."""
    a = processing(attenuation, profile)
    zoom = (profile.rows / a.shape[0], profile.columns / a.shape[1])
    a = ndimage.zoom(a, zoom, order=1, mode="nearest", grid_mode=True)[: profile.rows, : profile.columns]
    noise = rng.standard_normal(a.shape, dtype=np.float32)
    a = a + profile.noise * (0.5 + a) * noise
    a = _collimate(a, profile)
    _draw_marker(a, profile)
    return quantise(np.clip(a, 0.0, 1.0), profile)


def stored_value(a, profile: SiteProfile):
    """Map display attenuation (0..1) to stored values (float), honouring MONOCHROME1."""
    full = float(2**profile.bits_stored - 1)
    low, high = profile.stored_range[0] * full, profile.stored_range[1] * full
    if profile.photometric == "MONOCHROME1":
        return high - np.asarray(a) * (high - low)
    return low + np.asarray(a) * (high - low)


def quantise(a: np.ndarray, profile: SiteProfile) -> np.ndarray:
    return np.rint(stored_value(a, profile)).astype(np.uint16)


def _collimate(a: np.ndarray, profile: SiteProfile) -> np.ndarray:
    rows, cols = a.shape
    top, bottom, left, right = (m / profile.pixel_spacing_mm for m in profile.collimation_mm)
    r = np.arange(rows, dtype=np.float32) + 0.5
    c = np.arange(cols, dtype=np.float32) + 0.5
    penumbra = 1.5
    row_in = np.clip((r - top) / penumbra, 0, 1) * np.clip((rows - bottom - r) / penumbra, 0, 1)
    col_in = np.clip((c - left) / penumbra, 0, 1) * np.clip((cols - right - c) / penumbra, 0, 1)
    inside = row_in[:, None] * col_in[None, :]
    return a * inside + profile.collimation_fill * (1.0 - inside)


def _draw_marker(a: np.ndarray, profile: SiteProfile) -> None:
    glyph = np.array([[ch == "X" for ch in line] for line in _GLYPHS[profile.marker]])
    cell = max(1, int(round(profile.marker_height_mm / 7.0 / profile.pixel_spacing_mm)))
    mask = np.kron(glyph, np.ones((cell, cell), dtype=bool))
    top, bottom, left, right = (int(m / profile.pixel_spacing_mm) for m in profile.collimation_mm)
    margin = int(round(12.0 / profile.pixel_spacing_mm))
    h, w = mask.shape
    r0 = top + margin if profile.marker_corner.startswith("top") else a.shape[0] - bottom - margin - h
    c0 = left + margin if profile.marker_corner.endswith("left") else a.shape[1] - right - margin - w
    region = a[r0 : r0 + h, c0 : c0 + w]
    region[mask] = MARKER_VALUE


WORKING_MAX_SIDE = 256


def working_grid(profile: SiteProfile) -> tuple[tuple[int, int], tuple[float, float]]:
    """Shape and (row, col) spacing in mm of the grid the phantom is rendered on.

    The anatomy is rendered at most WORKING_MAX_SIDE pixels per side and resampled to
    the site's matrix; noise, collimation and the marker are added at full resolution.
    """
    factor = max(1.0, max(profile.rows, profile.columns) / WORKING_MAX_SIDE)
    shape = (int(np.ceil(profile.rows / factor)), int(np.ceil(profile.columns / factor)))
    spacing = (
        profile.rows * profile.pixel_spacing_mm / shape[0],
        profile.columns * profile.pixel_spacing_mm / shape[1],
    )
    return shape, spacing
