"""Deterministic randomness and UIDs for the synthetic hospitals.

Everything is derived from a hash of its key parts (seed, site, patient, ...), so the
same key always gives the same generator or UID, whatever the order of generation.
"""
from __future__ import annotations

import hashlib

import numpy as np

_DOMAIN = "fedrad-synth-v1"


def _digest(*parts: object) -> bytes:
    text = "|".join(str(part) for part in (_DOMAIN, *parts))
    return hashlib.sha256(text.encode("utf-8")).digest()


def rng_for(*parts: object) -> np.random.Generator:
    """A numpy generator seeded from the key parts."""
    return np.random.default_rng(int.from_bytes(_digest("rng", *parts)[:16], "big"))


def uid_for(*parts: object) -> str:
    """A DICOM UID `2.25.<128-bit int>` derived from the key parts (at most 44 chars)."""
    return "2.25." + str(int.from_bytes(_digest("uid", *parts)[:16], "big"))
