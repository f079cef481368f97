"""Virtual sites for the simulated federation.

A virtual site is a synthetic hospital that goes through exactly what a real site's
data goes through: synthetic DICOM export -> `fedrad-site keys init` -> ingest
(de-identification, encryption). It is built once per (seed, partition, size) and
cached; a half-built site is never used (it is built in a temporary folder and renamed).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from client.ingest import ingest
from client.keys import init_keys
from common.synth import write_hospital

READY_MARK = "READY"
FORMAT = "v4"  # bump when what a virtual site holds changes, so caches are rebuilt
# A synthetic hospital has no real patients: a generous lifetime budget, so demos and
# benchmarks can run again on the cached site (its ledger still accumulates), and
# non-private comparison runs are allowed; and it runs any app, so a simulation runs the
# app as it is being developed. A real site writes its own policy.toml, and by default
# runs no app until its operator lists the app's digest (`fedrad-site app digest`).
VIRTUAL_SITE_POLICY = """# Virtual (synthetic) site: no real patients.
[privacy]
max-epsilon = 1000.0
allow-non-private = true
[apps]
allow-any-app = true
"""


def virtual_site_dir(cache_dir: Path, *, partition_id: int, seed: int, patients: int) -> Path:
    return cache_dir / f"sim-{FORMAT}-seed{seed}-p{patients}" / f"site-{partition_id:03d}"


def ensure_virtual_site(cache_dir: Path, *, partition_id: int, seed: int, patients: int = 0) -> Path:
    """The site directory (keys, store) of virtual site `partition_id`, built on first use."""
    site_dir = virtual_site_dir(cache_dir, partition_id=partition_id, seed=seed, patients=patients)
    if (site_dir / READY_MARK).exists():
        return site_dir / "site"
    site_dir.parent.mkdir(parents=True, exist_ok=True)
    building = site_dir.with_name(f"{site_dir.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    export = building / "export"
    write_hospital(export, site_index=partition_id, seed=seed, patients=patients or None)
    site = building / "site"
    keys = init_keys(site)
    (site / "policy.toml").write_text(VIRTUAL_SITE_POLICY, encoding="utf-8")
    summary = ingest(site, export / "dicom", export / "labels.csv", keys=keys)
    if summary.ingested == 0:
        raise RuntimeError("the virtual site's synthetic export produced no usable image")
    (building / READY_MARK).write_text("ok\n")
    try:
        os.rename(building, site_dir)
    except OSError:  # another process finished the same site first
        shutil.rmtree(building, ignore_errors=True)
    return site_dir / "site"

