"""Site ingest: DICOM export -> de-identified, encrypted site store.

For each file: read it, join its label by the original SOPInstanceUID, de-identify it
(PS3.15 Annex E), turn it into a training tensor with the common pixel pipeline, and
encrypt both into the store. Files that cannot be made safe are quarantined, files that
cannot be used are rejected; both are counted by reason and never stop the run.
Ingest is idempotent (a keyed hash of each file's bytes marks what is in the store) and
resumable (the manifest is committed in batches; orphans of a killed run are removed).
De-identification options and pixel-clean rules come from the site policy's ``[deid]``
table (``<site-dir>/policy.toml``, see ``client.deid_policy``) unless the caller passes them.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from client.deid import DeidOptions, Deidentifier, PixelCleanRule
from client.deid.encode import encode_parts
from client.deid.profile import quiet_pydicom
from client.ingest_pool import ordered_map
from client.keys import SiteKeys
from client.labels import read_labels
from client.store import SiteStore
from client.store.manifest import SealedImage
from common.pixels import ImageRefused, PixelPipeline, load_dataset

DEFAULT_TENSOR_SIZE = 128
COMMIT_EVERY = 64


@dataclass
class IngestSummary:
    """What an ingest did, in counts and reason codes only (never a header value)."""

    files: int = 0
    ingested: int = 0
    already_in_store: int = 0
    quarantined: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    labels_without_image: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "files": self.files,
            "ingested": self.ingested,
            "already_in_store": self.already_in_store,
            "quarantined": dict(sorted(self.quarantined.items())),
            "rejected": dict(sorted(self.rejected.items())),
            "labels_without_image": self.labels_without_image,
            "seconds": round(self.seconds, 3),
        }


def dicom_files(path: Path) -> Iterator[Path]:
    """Every regular file under `path` (or `path` itself), in a stable order."""
    if path.is_file():
        yield path
        return
    if not path.is_dir():
        raise FileNotFoundError("the DICOM path does not exist: pass --dicom with a file or folder of the export")
    yield from sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def ingest(
    site_dir: Path,
    dicom_path: Path,
    labels_csv: Path,
    *,
    keys: SiteKeys,
    options: DeidOptions | None = None,
    pixel_clean_rules: tuple[PixelCleanRule, ...] | None = None,
    tensor_size: int = DEFAULT_TENSOR_SIZE,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> IngestSummary:
    """Ingest every file under `dicom_path`; see the module docstring.

    `options` and `pixel_clean_rules` left as None are read from the site policy; an
    invalid policy raises one PolicyError (TOML) or DeidConfigError ([deid]) before any
    file is read. `workers` > 1 reads, de-identifies, preprocesses and seals (encrypts and
    writes the objects of) files in that many forked processes (client.ingest_pool); this
    process alone adds them to the manifest and commits.
    """
    started = time.perf_counter()
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}; fix: pass --workers 1 or more")
    if options is None or pixel_clean_rules is None:
        from client.deid_policy import deid_settings
        from client.privacy import load_policy

        policy_options, policy_rules = deid_settings(load_policy(site_dir))
        options = policy_options if options is None else options
        pixel_clean_rules = policy_rules if pixel_clean_rules is None else pixel_clean_rules
    labels = read_labels(labels_csv)
    files = list(dicom_files(dicom_path))
    summary = IngestSummary(files=len(files))
    seen_uids: set[str] = set()
    with SiteStore.open_or_create(site_dir, keys) as store, quiet_pydicom():
        store.collect_orphans()
        prepare = _Preparer(labels, store.has_source, store.seal_image, keys.site_secret, tensor_size,
                            Deidentifier(site_secret=keys.site_secret, options=options,
                                         pixel_clean_rules=pixel_clean_rules))
        pending = 0
        prepared_files = ordered_map(prepare, files, min(workers, len(files)))
        try:
            for index, prepared in enumerate(prepared_files, start=1):
                if prepared.labelled_uid:
                    seen_uids.add(prepared.labelled_uid)
                outcome = _store(prepared, store)
                if outcome == "ingested":
                    summary.ingested += 1
                    pending += 1
                elif outcome == "already-in-store":
                    summary.already_in_store += 1
                elif outcome.startswith("quarantine:"):
                    summary.quarantined[outcome.split(":", 1)[1]] += 1
                else:
                    summary.rejected[outcome] += 1
                if pending >= COMMIT_EVERY:
                    store.commit()
                    pending = 0
                if progress:
                    progress(index, len(files))
        except BaseException:
            prepared_files.close()  # the workers finish or are gone: none is still writing
            store.commit()  # what was ingested before the error (a worker crash) is kept,
            store.collect_orphans()  # what was sealed after it is removed
            raise
        store.commit()
    summary.labels_without_image = len(set(labels) - seen_uids)
    summary.seconds = time.perf_counter() - started
    _write_report(site_dir, summary)
    return summary


@dataclass(frozen=True)
class _Prepared:
    """One file, read, de-identified, preprocessed and sealed into the store's objects, ready
    to be named by the manifest; or why not."""

    outcome: str  # "ingested" (sealed), "already-in-store", "quarantine:<reason>" or a rejection
    labelled_uid: str | None = None  # the original SOPInstanceUID when the labels name it (memory only)
    source_key: str = ""
    sealed: SealedImage | None = None


class _Preparer:
    """The per-file work up to the sealed objects: runs in ingest workers (client.ingest_pool)."""

    def __init__(self, labels, is_stored, seal, site_secret: bytes, tensor_size: int, deidentify) -> None:
        self._labels, self._is_stored, self._seal, self._secret = labels, is_stored, seal, site_secret
        self._deidentify, self._pixels = deidentify, PixelPipeline(size=tensor_size)

    def __call__(self, path: Path) -> _Prepared:
        data = path.read_bytes()
        source_key = hmac.new(self._secret, b"source:" + hashlib.sha256(data).digest(), "sha256").hexdigest()
        try:
            dataset = load_dataset(data)
        except ImageRefused as refused:
            return _Prepared(refused.reason)
        uid = str(dataset.get("SOPInstanceUID", "") or "")
        labelled = uid if uid in self._labels else None
        if self._is_stored(source_key):
            return _Prepared("already-in-store", labelled)
        if labelled is None:
            return _Prepared("no-label")
        try:
            result = self._deidentify(dataset, in_place=True)  # the original dataset is not used again
        except Exception:  # noqa: BLE001 - a file that breaks de-identification is never stored
            return _Prepared("deidentification-failed", labelled)
        if not result.admissible:
            return _Prepared(f"quarantine:{result.quarantine}", labelled)
        try:
            tensor = self._pixels(result.dataset)
        except ImageRefused as refused:
            return _Prepared(refused.reason, labelled)
        deidentified = result.dataset
        return _Prepared("ingested", labelled, source_key, self._seal(
            dicom=encode_parts(deidentified),
            tensor=tensor.astype("float16"),
            patient_key=result.patient_key,
            label=self._labels[uid],
            meta={
                "modality": str(deidentified.get("Modality", "")),
                "manufacturer": str(deidentified.get("Manufacturer", "")),
                "rows": int(deidentified.get("Rows", 0) or 0),
                "columns": int(deidentified.get("Columns", 0) or 0),
            },
        ))


def _store(prepared: _Prepared, store: SiteStore) -> str:
    """Add a sealed image to the store (a copy of one stored this run: already in store)."""
    if prepared.outcome != "ingested":
        return prepared.outcome
    if store.has_source(prepared.source_key):
        store.discard_sealed(prepared.sealed)
        return "already-in-store"
    store.add_sealed(prepared.source_key, prepared.sealed)
    return "ingested"


def _write_report(site_dir: Path, summary: IngestSummary) -> Path:
    reports = site_dir / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    path = reports / f"ingest-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 1_000_000:06d}.json"
    path.write_text(json.dumps(summary.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path
