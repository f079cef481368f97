"""A site's training and validation tensors, read from its store and kept in memory.

The split is by patient (the privacy unit) and stable: a patient's images are all in
training or all in validation, decided by a hash of the opaque patient key, so the
validation patients never change between rounds, runs or restarts. A site with at
least two patients always has one validation patient (the one with the smallest hash).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from client.store import SiteStore

VALIDATION_PERCENT = 20


@dataclass(frozen=True)
class SiteData:
    train_images: torch.Tensor  # (N, 1, S, S) float32 in [0, 1]
    train_labels: torch.Tensor  # (N,) int64
    train_patients: tuple[str, ...]  # opaque patient key of each training image
    val_images: torch.Tensor
    val_labels: torch.Tensor

    @property
    def patients(self) -> int:
        return len(set(self.train_patients))


class NoSiteData(RuntimeError):
    """The site store holds nothing to train on."""


def _split_hash(patient_key: str) -> int:
    return int.from_bytes(hashlib.sha256(b"fedrad-split:" + patient_key.encode()).digest()[:4], "big")


def validation_patients(patient_keys: set[str]) -> set[str]:
    """The patients held out for validation (about VALIDATION_PERCENT of them)."""
    chosen = {key for key in patient_keys if _split_hash(key) % 100 < VALIDATION_PERCENT}
    if not chosen and len(patient_keys) >= 2:
        chosen = {min(patient_keys, key=_split_hash)}
    return chosen


def _resize(tensor: np.ndarray, size: int) -> torch.Tensor:
    image = torch.from_numpy(np.asarray(tensor, dtype=np.float32))[None, None]
    if image.shape[-1] == size and image.shape[-2] == size:
        return image[0]
    if image.shape[-1] < size or image.shape[-2] < size:
        raise ValueError(
            f"the store holds {image.shape[-1]}-pixel tensors but the run asks for {size}: "
            f"lower image-size or re-ingest with --tensor-size {size}"
        )
    return F.interpolate(image, size=(size, size), mode="area")[0]


def training_patients(store: SiteStore) -> int:
    """Patients in the training split (without decrypting any image)."""
    patients = {record.patient_key for record in store.records()}
    return len(patients - validation_patients(patients))


def load_site_data(store: SiteStore, image_size: int) -> SiteData:
    """Decrypt every image tensor of the store in memory and split it by patient."""
    records = store.records()
    if not records:
        raise NoSiteData(
            "the site store holds no images: run `fedrad-site ingest --site-dir DIR --dicom PATH "
            "--labels CSV` first"
        )
    held_out = validation_patients({record.patient_key for record in records})
    splits: dict[bool, tuple[list, list, list]] = {False: ([], [], []), True: ([], [], [])}
    for record in sorted(records, key=lambda r: r.image_id):
        images, labels, patients = splits[record.patient_key in held_out]
        images.append(_resize(store.read_tensor(record.image_id), image_size))
        labels.append(int(record.label))
        patients.append(record.patient_key)
    (train_x, train_y, train_p), (val_x, val_y, _) = splits[False], splits[True]
    if not train_x:
        raise NoSiteData("every patient of the site fell into the validation split: ingest more patients")

    def stack(images: list) -> torch.Tensor:
        return torch.stack(images) if images else torch.zeros((0, 1, image_size, image_size))

    return SiteData(
        train_images=stack(train_x),
        train_labels=torch.tensor(train_y, dtype=torch.int64),
        train_patients=tuple(train_p),
        val_images=stack(val_x),
        val_labels=torch.tensor(val_y, dtype=torch.int64),
    )


# Decrypted site data by (site, image size, store state), least recently used first. A real
# SuperNode serves one site; a simulation worker serves several virtual sites in turn, and
# re-decrypting a site on every message cost more than a small site's training.
_CACHE: OrderedDict[tuple[str, int, str], SiteData] = OrderedDict()
CACHED_SITES = 8


def cached_site_data(site_dir: Path, store: SiteStore, image_size: int) -> SiteData:
    """`load_site_data`, decrypted once per process for a given store state and size.

    Keeps the newest state of at most `CACHED_SITES` sites; a site's older state or other
    image size is dropped when it is replaced.
    """
    state = hashlib.sha256("".join(sorted(r.image_id for r in store.records())).encode()).hexdigest()
    site = str(site_dir.resolve())
    key = (site, image_size, state)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    for stale in [k for k in _CACHE if k[0] == site]:
        del _CACHE[stale]
    _CACHE[key] = load_site_data(store, image_size)
    while len(_CACHE) > CACHED_SITES:
        _CACHE.popitem(last=False)
    return _CACHE[key]
