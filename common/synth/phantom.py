"""A chest-radiograph phantom: body outline, lungs, mediastinum, heart, spine, ribs,
clavicles, lung vessels and texture, and the positive finding (nodules or opacities).

Rendering is numpy only and returns attenuation-like values in [0, 1] (0 = air,
larger = denser; shown bright on a MONOCHROME2 display). Geometry lives in normalised
thorax coordinates: u runs from the patient's right (-1, image left) to the patient's
left (+1, image right) in units of the thorax half width; v runs from the lung apex (0)
to the costophrenic angles (~1) in units of the lung height.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from common.synth.seeding import rng_for


@dataclass(frozen=True)
class FindingParams:
    """How hard the positive finding is to see: the knobs tuned by benchmarks/centralised.py.

    Sizes are those of large nodules and masses (3-6 cm), bigger than a typical
    screening nodule, so that the fedrad CNN at 64x64 input, trained on the ~600 images
    of four default sites, reaches a held-out ROC AUC of about 0.93 (target 0.90-0.97).
    """

    nodule_radius_mm: tuple[float, float] = (15.0, 31.0)
    nodule_contrast: tuple[float, float] = (0.23, 0.38)
    opacity_rate: float = 0.4
    opacity_radius_mm: tuple[float, float] = (27.0, 47.0)
    opacity_contrast: tuple[float, float] = (0.17, 0.31)
    count_weights: tuple[float, ...] = (0.28, 0.40, 0.32)  # P(1, 2, 3 findings)


DEFAULT_FINDINGS = FindingParams()
RIB_CONTRAST = 0.07
VESSEL_CONTRAST = 0.05
TEXTURE_CONTRAST = 0.012


@dataclass(frozen=True)
class Anatomy:
    """One patient's body (kept across that patient's studies)."""

    half_width_mm: float
    lung_height_mm: float
    female: bool
    heart_scale: float
    mediastinum_scale: float
    rib_phase: float
    texture_key: int


@dataclass(frozen=True)
class Exposure:
    """One study's positioning: where the thorax sits in the field and how."""

    shift_x_mm: float
    apex_y_mm: float
    rotation_deg: float
    inspiration: float
    ap: bool


@dataclass(frozen=True)
class Finding:
    """A nodule or opacity at (u, v) in thorax coordinates."""

    kind: str  # "nodule" | "opacity"
    u: float
    v: float
    radius_mm: float
    contrast: float
    shape_key: int


def sample_anatomy(rng: np.random.Generator, *, female: bool, age: float) -> Anatomy:
    width = rng.normal(140.0 if female else 155.0, 10.0)
    height = rng.normal(250.0 if female else 270.0, 18.0)
    return Anatomy(
        half_width_mm=float(np.clip(width, 115.0, 185.0)),
        lung_height_mm=float(np.clip(height, 205.0, 320.0)),
        female=female,
        heart_scale=float(np.clip(rng.normal(1.0 + 0.002 * (age - 50.0), 0.08), 0.8, 1.3)),
        mediastinum_scale=float(rng.uniform(0.85, 1.2)),
        rib_phase=float(rng.uniform(-0.03, 0.03)),
        texture_key=int(rng.integers(2**62)),
    )


def sample_exposure(rng: np.random.Generator, *, field_height_mm: float, ap: bool) -> Exposure:
    return Exposure(
        shift_x_mm=float(rng.normal(0.0, 8.0)),
        apex_y_mm=float(field_height_mm * rng.uniform(0.14, 0.22)),
        rotation_deg=float(rng.normal(0.0, 1.5)),
        inspiration=float(rng.normal(0.0, 0.03)),
        ap=ap,
    )


def _step(x: np.ndarray, width: float) -> np.ndarray:
    """Smooth 0 -> 1 step at x = 0."""
    return 0.5 * (1.0 + np.tanh(x / width))


def _dome(r2: np.ndarray) -> np.ndarray:
    """Projected thickness of an ellipsoid: sqrt(1 - r^2) inside, 0 outside."""
    return np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))


def _diaphragm(exposure: Exposure, side: int) -> float:
    """Height (v) of the top of the hemidiaphragm dome; the right one sits higher."""
    right_higher = 0.03 if side < 0 else 0.0
    return 0.86 + exposure.inspiration - right_higher


def lung_air(u, v, anatomy: Anatomy, exposure: Exposure) -> np.ndarray:
    """Aerated lung thickness (0..1) at thorax coordinates, heart shadow removed."""
    u, v = np.asarray(u, dtype=np.float32), np.asarray(v, dtype=np.float32)
    air = np.zeros(np.broadcast(u, v).shape, dtype=np.float32)
    medial = 0.11 * anatomy.mediastinum_scale + 0.05 * np.clip(v, 0.0, 1.0)
    for side in (-1, 1):
        centre = side * 0.5
        du = (u - centre) / 0.42
        lung = _dome(du * du + ((v - 0.56) / 0.60) ** 2)
        dome_top = _diaphragm(exposure, side) + 0.26 * du * du
        lung = lung * _step(dome_top - v, 0.012) * _step(side * u - medial, 0.015)
        air += lung
    return air * (1.0 - 0.75 * _heart(u, v, anatomy, exposure))


def _heart(u, v, anatomy: Anatomy, exposure: Exposure) -> np.ndarray:
    scale = anatomy.heart_scale * (1.12 if exposure.ap else 1.0)
    base = _diaphragm(exposure, -1)
    ru = (u - 0.14) / (0.42 * scale)
    rv = (v - (base - 0.15)) / (0.20 * scale)
    return _dome(ru * ru + rv * rv)


def _band(v: np.ndarray, centre: np.ndarray, half_width: float) -> np.ndarray:
    """Projected cylinder across rows: thickness of a band centred on `centre`."""
    d = (v - centre) / half_width
    return _dome(d * d)


def _ribs(u: np.ndarray, v: np.ndarray, anatomy: Anatomy, exposure: Exposure, cage: np.ndarray) -> np.ndarray:
    bone = np.zeros_like(u)
    t = np.abs(u) / 0.95
    lateral = _step(cage - np.abs(u), 0.02)
    posterior = lateral * _step(t - 0.08, 0.01)
    first = 0.02 + anatomy.rib_phase - 0.5 * exposure.inspiration
    posterior = posterior * _step(1.02 + 0.25 * t - v, 0.04)  # hidden by the abdomen medially
    for k in range(10):
        centre = first + 0.095 * k - 0.08 * t + 0.36 * t * t
        bone += posterior * _band(v, centre, 0.022 + 0.002 * k)
    anterior = lateral * _step(t - 0.3, 0.03)
    for k in range(6):
        centre = 0.08 + first + 0.11 * k + 0.18 * (0.95 - t)
        bone += 0.5 * anterior * _band(v, centre, 0.02)
    clavicle_top = -0.05 if exposure.ap else 0.03
    clavicle = clavicle_top - 0.16 * t + 0.04 * np.sin(np.pi * np.clip(t, 0.0, 0.8) / 0.8)
    bone += 1.3 * _step(t - 0.06, 0.01) * _step(0.8 - t, 0.02) * _band(v, clavicle, 0.028)
    return bone


def _vessels(x: np.ndarray, y: np.ndarray, anatomy: Anatomy) -> np.ndarray:
    """Branching pulmonary vessels radiating from the hila (mm coordinates)."""
    rng = rng_for("vessels", anatomy.texture_key)
    out = np.zeros_like(x)
    extent = (y.min(axis=1), y.max(axis=1), x.min(axis=0), x.max(axis=0))  # per row / column
    W, L = anatomy.half_width_mm, anatomy.lung_height_mm
    for side in (-1, 1):
        hilum = np.array([side * 0.24 * W, 0.45 * L])
        for angle in np.linspace(-1.2, 1.3, 9) + rng.normal(0.0, 0.12, 9):
            direction = np.array([side * np.cos(angle), np.sin(angle)])
            length = rng.uniform(0.45, 0.75) * W
            start = hilum + rng.normal(0.0, 4.0, 2)
            _segment(out, x, y, extent, start, start + direction * length, 3.2, 0.9)
            split = rng.uniform(0.3, 0.6)
            turn = angle + rng.choice((-1, 1)) * rng.uniform(0.3, 0.7)
            branch_start = start + direction * length * split
            branch_dir = np.array([side * np.cos(turn), np.sin(turn)])
            _segment(out, x, y, extent, branch_start, branch_start + branch_dir * length * 0.5, 2.0, 0.7)
    return out


def _segment(out, x, y, extent, p0, p1, w0: float, w1: float) -> None:
    """Add a tapered line from p0 to p1 into `out` (in place), within its bounding box."""
    pad = w0 * 2.5
    y_low, y_high, x_low, x_high = extent
    ys = np.nonzero((y_high >= min(p0[1], p1[1]) - pad) & (y_low <= max(p0[1], p1[1]) + pad))[0]
    xs = np.nonzero((x_high >= min(p0[0], p1[0]) - pad) & (x_low <= max(p0[0], p1[0]) + pad))[0]
    if ys.size == 0 or xs.size == 0:
        return
    window = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    px, py = x[window] - p0[0], y[window] - p0[1]
    d = p1 - p0
    t = np.clip((px * d[0] + py * d[1]) / float(d @ d), 0.0, 1.0)
    dist2 = (px - t * d[0]) ** 2 + (py - t * d[1]) ** 2
    width = w0 + (w1 - w0) * t
    out[window] += np.exp(-dist2 / (width * width)) * (1.0 - 0.5 * t)


def sample_findings(
    rng: np.random.Generator, anatomy: Anatomy, params: FindingParams | None = None
) -> tuple[Finding, ...]:
    """One to three findings inside the visible lung fields."""
    params = params or DEFAULT_FINDINGS
    count = 1 + int(rng.choice(len(params.count_weights), p=params.count_weights))
    upright = Exposure(0.0, 0.0, 0.0, 0.0, False)
    findings = []
    while len(findings) < count:
        u = float(rng.choice((-1, 1)) * rng.uniform(0.15, 0.9))
        v = float(rng.uniform(0.08, 0.9))
        if float(lung_air(u, v, anatomy, upright)) < 0.35:
            continue
        if rng.random() < params.opacity_rate:
            kind, radius, contrast = "opacity", params.opacity_radius_mm, params.opacity_contrast
        else:
            kind, radius, contrast = "nodule", params.nodule_radius_mm, params.nodule_contrast
        findings.append(
            Finding(kind, u, v, float(rng.uniform(*radius)), float(rng.uniform(*contrast)), int(rng.integers(2**62)))
        )
    return tuple(findings)


def evolve_findings(rng: np.random.Generator, findings: tuple[Finding, ...]) -> tuple[Finding, ...]:
    """The same findings at a follow-up study: slightly grown or shrunk."""
    return tuple(
        Finding(f.kind, f.u, f.v, f.radius_mm * float(rng.uniform(0.9, 1.2)), f.contrast, f.shape_key)
        for f in findings
    )


def _add_finding(a, x, y, air, finding: Finding, anatomy: Anatomy) -> None:
    cx, cy = finding.u * anatomy.half_width_mm, finding.v * anatomy.lung_height_mm
    rng = rng_for("finding", finding.shape_key)
    r = finding.radius_mm
    dx, dy = x - cx, y - cy
    if finding.kind == "nodule":
        theta = np.arctan2(dy, dx)
        lobes = 1.0 + 0.12 * np.cos(3.0 * theta + rng.uniform(0, 2 * np.pi)) + 0.06 * np.cos(5.0 * theta)
        a += finding.contrast * _dome((dx * dx + dy * dy) / (r * lobes) ** 2)
        return
    blob = np.zeros_like(a)
    for _ in range(int(rng.integers(3, 7))):
        ox, oy = rng.normal(0.0, 0.45 * r, 2)
        sigma = r * rng.uniform(0.3, 0.55)
        blob += np.exp(-((dx - ox) ** 2 + (dy - oy) ** 2) / (2 * sigma * sigma))
    a += finding.contrast * np.minimum(blob, 1.0) * np.clip(air / 0.3, 0.0, 1.0)


def render_chest(
    anatomy: Anatomy,
    exposure: Exposure,
    findings: tuple[Finding, ...],
    *,
    shape: tuple[int, int],
    spacing_mm: tuple[float, float],
    field_width_mm: float,
) -> np.ndarray:
    """Attenuation image (float32, `shape`, values in [0, 1]) sampled at `spacing_mm` (row, col)."""
    rows, cols = shape
    ys = ((np.arange(rows, dtype=np.float32) + 0.5) * spacing_mm[0] - exposure.apex_y_mm)[:, None]
    xs = ((np.arange(cols, dtype=np.float32) + 0.5) * spacing_mm[1] - field_width_mm / 2 - exposure.shift_x_mm)[None, :]
    pivot = 0.5 * anatomy.lung_height_mm
    angle = np.deg2rad(exposure.rotation_deg)
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    x = c * xs + s * (ys - pivot)
    y = -s * xs + c * (ys - pivot) + pivot
    u, v = x / anatomy.half_width_mm, y / anatomy.lung_height_mm

    neck = 0.30
    cage = neck + (1.0 + 0.06 * np.clip(v, 0.0, 1.5) - neck) * _step(v + 0.06, 0.04)
    shoulders = neck + (1.12 - neck) * _step(v + 0.12, 0.05)
    body = np.maximum(_dome((u / cage) ** 2), 0.55 * _dome((u / shoulders) ** 2) * _step(0.35 - v, 0.1))
    a = 0.40 * body

    air = lung_air(u, v, anatomy, exposure)
    a -= 0.30 * air
    a += 0.16 * _heart(u, v, anatomy, exposure)
    medial = 0.11 * anatomy.mediastinum_scale + 0.05 * np.clip(v, 0.0, 1.0)
    dia = _diaphragm(exposure, -1)
    a += 0.10 * _step(medial + 0.02 - np.abs(u), 0.02) * _step(v + 0.15, 0.03) * _step(dia + 0.05 - v, 0.03)
    a -= 0.05 * _step(0.035 - np.abs(u - 0.01), 0.008) * _step(0.35 - v, 0.03) * body  # trachea
    a += 0.06 * _dome(((x - 0.13 * anatomy.half_width_mm) ** 2 + (y - 0.28 * anatomy.lung_height_mm) ** 2) / 15.0**2)
    a += 0.10 * _step(22.0 - np.abs(x), 3.0) * (1.0 + 0.15 * np.cos(2 * np.pi * y / 26.0)) * body
    a += 0.08 * _step(v - (dia + 0.1 * u * u), 0.03) * body  # abdomen below the diaphragm
    if anatomy.female:
        for side in (-1, 1):
            breast = _dome(((u - side * 0.48) / 0.38) ** 2 + ((v - dia + 0.06) / 0.22) ** 2)
            a += 0.06 * breast * _step(v - dia + 0.12, 0.05)
    a += RIB_CONTRAST * _ribs(u, v, anatomy, exposure, cage) * body

    rng = rng_for("texture", anatomy.texture_key)
    noise_mm = 3.0
    field = ndimage.gaussian_filter(
        rng.standard_normal((rows, cols), dtype=np.float32), sigma=(noise_mm / spacing_mm[0], noise_mm / spacing_mm[1])
    )
    field /= max(float(field.std()), 1e-6)
    lungs = np.clip(air / 0.2, 0.0, 1.0)
    a += lungs * (TEXTURE_CONTRAST * field + VESSEL_CONTRAST * _vessels(x, y, anatomy))
    for finding in findings:
        _add_finding(a, x, y, air, finding, anatomy)
    return np.clip(a, 0.0, 1.0).astype(np.float32)
