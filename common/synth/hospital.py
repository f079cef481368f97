"""Write synthetic hospitals: a DICOM export folder and a labels CSV per site.

Layout of one site:  <out_dir>/dicom/STUDY0001/IMG00001.dcm, ...  and  <out_dir>/labels.csv
(`SOPInstanceUID,finding`). File names carry no identifying data. A site is written into
a hidden temporary folder beside `out_dir` and renamed into place when complete.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.synth import detector, phantom
from common.synth.export import ImageRecord, build_dataset, write_dataset
from common.synth.people import SiteIdentity, dicom_date, sample_identity, sample_patient
from common.synth.profiles import SiteProfile, sample_profile
from common.synth.seeding import rng_for, uid_for

HELD_OUT_SITE_INDEX = 10_000  # reserved for the coordinator's held-out evaluation hospital
LABELS_HEADER = "SOPInstanceUID,finding"
MIN_AGE, MAX_AGE = 18.0, 95.0


@dataclass(frozen=True)
class HospitalSummary:
    """What `write_hospital` wrote."""

    site_index: int
    out_dir: Path
    images: int
    patients: int
    positives: int
    manufacturer: str
    modality: str


def write_hospitals(out: Path, *, sites: int, seed: int = 0, patients: int | None = None) -> list[HospitalSummary]:
    """Write sites 0..sites-1 into out/site-000, out/site-001, ..."""
    if sites < 1:
        raise ValueError("the number of sites must be at least 1: pass sites >= 1")
    out = Path(out)
    return [
        write_hospital(out / f"site-{index:03d}", site_index=index, seed=seed, patients=patients)
        for index in range(sites)
    ]


def write_hospital(out_dir: Path, *, site_index: int, seed: int = 0, patients: int | None = None) -> HospitalSummary:
    """Write one synthetic hospital's DICOM export and labels into `out_dir` (which must not exist yet, or be empty)."""
    if site_index < 0:
        raise ValueError("site_index must be a non-negative integer: use 0, 1, 2, ... (or HELD_OUT_SITE_INDEX)")
    if patients is not None and patients < 1:
        raise ValueError("patients must be at least 1: pass patients >= 1, or None for the site's default")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError("the output folder of a synthetic hospital already exists and is not empty: choose a new folder or remove it")
    profile = sample_profile(seed=seed, site_index=site_index)
    identity = sample_identity(seed=seed, site_index=site_index)
    count = patients if patients is not None else profile.default_patients

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        labels = _write_images(partial, profile, identity, seed=seed, patients=count)
        rows = [LABELS_HEADER] + [f"{uid},{label}" for uid, label in labels]
        (partial / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()
        os.rename(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return HospitalSummary(
        site_index=site_index,
        out_dir=out_dir,
        images=len(labels),
        patients=count,
        positives=sum(label for _, label in labels),
        manufacturer=profile.manufacturer,
        modality=profile.modality,
    )


def _write_images(root: Path, profile: SiteProfile, identity: SiteIdentity, *, seed: int, patients: int) -> list[tuple[str, int]]:
    shape, spacing = detector.working_grid(profile)
    field_w = profile.columns * profile.pixel_spacing_mm
    field_h = profile.rows * profile.pixel_spacing_mm
    labels: list[tuple[str, int]] = []
    study_number = 0
    site = profile.site_index
    for index in range(patients):
        rng = rng_for(seed, site, "patient", index)
        female = bool(rng.random() < profile.female_rate)
        age = float(np.clip(rng.normal(profile.mean_age, profile.age_sd), MIN_AGE, MAX_AGE))
        studies = 1 + int(rng.choice(3, p=profile.study_count_weights))
        patient = sample_patient(rng, identity, index=index, female=female, age=age, studies=studies)
        anatomy = phantom.sample_anatomy(rng, female=female, age=age)
        positive = bool(rng.random() < profile.prevalence)
        findings = phantom.sample_findings(rng, anatomy) if positive else ()
        for study, date in enumerate(patient.study_dates):
            study_number += 1
            srng = rng_for(seed, site, "study", index, study)
            view = "AP" if srng.random() < profile.ap_rate else "PA"
            exposure = phantom.sample_exposure(srng, field_height_mm=field_h, ap=view == "AP")
            if study > 0:
                findings = phantom.evolve_findings(srng, findings)
            attenuation = phantom.render_chest(
                anatomy, exposure, findings, shape=shape, spacing_mm=spacing, field_width_mm=field_w
            )
            pixels = detector.acquire(attenuation, profile, srng)
            key = (seed, site, index, study)
            record = ImageRecord(
                patient=patient,
                date=date,
                start_seconds=float(srng.uniform(7 * 3600, 20 * 3600)),
                study_id=f"{identity.code[:3]}{study_number + 1000 * (1 + site % 9):06d}"[:16],
                accession=f"{identity.code[:4]}{dicom_date(date)[2:]}{study_number:04d}"[:16],
                exam_id=f"EX{int(srng.integers(10**7, 10**8))}",
                referring=identity.referring_physicians[int(srng.integers(len(identity.referring_physicians)))],
                operator=identity.operators[int(srng.integers(len(identity.operators)))],
                view=view,
                study_uid=uid_for(*key, "study"),
                series_uid=uid_for(*key, "series", 1),
                sop_uid=uid_for(*key, "image", 1),
                frame_uid=uid_for(*key, "frame", 1),
                kvp=float(srng.uniform(110, 125) if view == "PA" else srng.uniform(85, 100)),
                tube_current_ma=int(srng.integers(200, 500)),
                exposure_ms=int(srng.integers(4, 20)),
            )
            dataset = build_dataset(profile, identity, record, pixels)
            write_dataset(dataset, root / "dicom" / f"STUDY{study_number:04d}" / "IMG00001.dcm")
            labels.append((record.sop_uid, int(positive)))
    return labels
