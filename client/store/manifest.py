"""The store's manifest: image records and their objects, as JSON (encrypted as object "manifest").

Plaintext::

    {"format": 1, "site_id": ..., "created": "2025-01-01T00:00:00Z", "generation": 3,
     "chunk_size": 1048576,
     "images": [{"image_id": ..., "patient_key": ..., "label": 0|1, "split": null|"train"|...,
                 "meta": {...}, "source_key": ..., "dicom_object": ..., "tensor_object": ...}]}

``source_key`` (an HMAC the ingest computes) makes ingest idempotent; the source key ->
image mapping is rebuilt from the records on load. No field holds a PHI value.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping

from client.store.errors import StoreError

MANIFEST_FORMAT = 1
SPLITS = (None, "train", "val", "test")
_HEX_ID = re.compile(r"[0-9a-f]{32}")
MetaValue = str | int | float


@dataclass(frozen=True)
class ImageRecord:
    """One de-identified image: its random id, patient key, label and metadata (no PHI)."""

    image_id: str
    patient_key: str
    label: int
    meta: Mapping[str, MetaValue] = field(default_factory=dict)
    split: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "meta", MappingProxyType(check_meta(self.meta)))

    def __reduce__(self):  # to and from ingest workers; the read-only meta view does not pickle
        return ImageRecord, (self.image_id, self.patient_key, self.label, dict(self.meta), self.split)


@dataclass(frozen=True)
class Entry:
    """A record with what only the store needs: its objects and source key."""

    record: ImageRecord
    source_key: str
    dicom_object: str
    tensor_object: str


@dataclass(frozen=True)
class SealedImage:
    """A record whose two objects are written (not yet durable) but not in the store yet."""

    record: ImageRecord
    dicom_object: str
    tensor_object: str


@dataclass(frozen=True)
class Manifest:
    site_id: str
    created: str
    generation: int
    chunk_size: int
    entries: tuple[Entry, ...] = ()

    @classmethod
    def new(cls, site_id: str, chunk_size: int) -> "Manifest":
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return cls(site_id=site_id, created=created, generation=0, chunk_size=chunk_size)

    def extended(self, more: tuple[Entry, ...]) -> "Manifest":
        return replace(self, generation=self.generation + 1, entries=self.entries + more)

    def to_json(self) -> bytes:
        images = [{"image_id": e.record.image_id, "patient_key": e.record.patient_key,
                   "label": e.record.label, "split": e.record.split, "meta": dict(e.record.meta),
                   "source_key": e.source_key, "dicom_object": e.dicom_object,
                   "tensor_object": e.tensor_object} for e in self.entries]
        doc = {"format": MANIFEST_FORMAT, "site_id": self.site_id, "created": self.created,
               "generation": self.generation, "chunk_size": self.chunk_size, "images": images}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, payload: bytes | bytearray) -> "Manifest":
        try:
            doc = json.loads(payload)
            if doc["format"] != MANIFEST_FORMAT:
                raise StoreError(f"manifest format {doc['format']} is not supported; rule: this "
                                 f"build reads format {MANIFEST_FORMAT}; fix: upgrade fedrad")
            entries = tuple(_entry(img) for img in doc["images"])
            return cls(site_id=str(doc["site_id"]), created=str(doc["created"]),
                       generation=int(doc["generation"]), chunk_size=int(doc["chunk_size"]),
                       entries=entries)
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError("the manifest is malformed; rule: manifest format "
                             f"{MANIFEST_FORMAT}; fix: restore store/manifest from backup") from exc


def _entry(img: dict) -> Entry:
    for key in ("image_id", "dicom_object", "tensor_object"):
        if not isinstance(img[key], str) or not _HEX_ID.fullmatch(img[key]):
            raise ValueError(f"{key} is not a 32-hex id")
    record = check_record(img["image_id"], img["patient_key"], img["label"], img["meta"], img["split"])
    return Entry(record=record, source_key=str(img["source_key"]),
                 dicom_object=img["dicom_object"], tensor_object=img["tensor_object"])


def check_record(image_id: str, patient_key: str, label: int, meta: Mapping,
                 split: str | None) -> ImageRecord:
    """Validate the caller-supplied fields of a record; StoreError names the field and rule."""
    if not isinstance(patient_key, str) or not patient_key:
        raise StoreError("patient_key must be a non-empty string; fix: pass the site's opaque patient key")
    if type(label) is not int or label not in (0, 1):
        raise StoreError("label must be the int 0 or 1; fix: map the labels CSV to 0/1")
    if split not in SPLITS:
        raise StoreError(f"split must be one of {SPLITS}; fix: pass one of them")
    return ImageRecord(image_id=image_id, patient_key=patient_key, label=label, meta=meta, split=split)


def check_meta(meta: Mapping) -> dict[str, MetaValue]:
    if not isinstance(meta, Mapping):
        raise StoreError("meta must be a mapping of str to str/int/float; fix: pass a dict")
    out: dict[str, MetaValue] = {}
    for key, value in meta.items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise StoreError(f"meta field {key!r} has type {type(value).__name__}; rule: meta maps "
                             "str to str, int or float (de-identified values only); fix: convert it")
        out[key] = value
    return out
