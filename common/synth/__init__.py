"""Synthetic hospitals: realistic chest-radiograph DICOM exports with fake identities.

`write_hospital` writes one site (DICOM files plus `labels.csv`), `write_hospitals`
several; each site's equipment, population and prevalence are drawn deterministically
from (seed, site_index), so sites are non-IID and any number of them can be made.
`HELD_OUT_SITE_INDEX` is reserved for the coordinator's held-out evaluation hospital.

Images are CR or DX chest projections of 320-640 pixels per side over a 350-430 mm
field of view (PixelSpacing 0.6-1.2 mm, coarser than a real detector, for speed).
The positive finding (1-3 nodules/masses or opacities, 3-9 cm) is sized so that the
fedrad CNN at 64x64 reaches a held-out AUC of about 0.93: see benchmarks/centralised.py.

Modules: seeding (hash-derived generators and UIDs), profiles (site equipment and
population), people (fake identities and dates), phantom (anatomy and findings),
detector (processing, noise, collimation, marker, quantisation), export (the DICOM
data set), hospital (the two entry points).
"""
from common.synth.hospital import HELD_OUT_SITE_INDEX, HospitalSummary, write_hospital, write_hospitals

__all__ = ["HELD_OUT_SITE_INDEX", "HospitalSummary", "write_hospital", "write_hospitals"]
