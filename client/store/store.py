"""The encrypted site store: ``<site-dir>/store/``.

Layout (directories 0700, files 0600, all ciphertext)::

    store/manifest         the manifest (object id "manifest"), envelope-encrypted
    store/objects/<id>     one object per file; ids are random 32-hex, never from content
    store/.lock            the single-writer lock (empty)

Each image is two objects: its de-identified DICOM and its tensor. ``add_image`` writes
both at once (``seal_image``, which ingest workers run, then ``add_sealed``); the record
joins the manifest at ``commit()``, which first makes every object written since the last
commit durable (an fsync of each, then of the directory) and then replaces the manifest
atomically, so the manifest never names an object a crash could lose. Objects never
committed are orphans: ``verify()`` reports them and ``collect_orphans()`` removes them.
A writer (add, collect, rewrap) holds ``store/.lock`` until ``close()``; readers take no
lock. Nothing decrypted is ever written, except by ``export_dicom`` into the directory it
is given.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Mapping

import numpy as np

from client.keys import SiteKeys
from client.store import envelope
from client.store.envelope import BYTES_LIKE, Plaintext
from client.store.errors import StoreError
from client.durable import fsync_dir, write_atomic
from client.store.files import TEMP_PREFIX, WriterLock, sync_files
from client.store.manifest import Entry, ImageRecord, Manifest, SealedImage, check_record
from client.store.tensor import decode_tensor, encode_tensor

MANIFEST_ID = "manifest"


class SiteStore:
    """A site's encrypted images. Build with :meth:`create`, :meth:`open` or :meth:`open_or_create`."""

    def __init__(self, root: Path, keys: SiteKeys, manifest: Manifest) -> None:
        self._root, self._keys = root, keys
        self._pending: dict[str, Entry] = {}
        self._unsynced: list[Path] = []  # objects written since the last commit, not yet durable
        self._lock = WriterLock(root)
        self._set_manifest(manifest)

    # --- construction -------------------------------------------------------------

    @classmethod
    def create(cls, site_dir: Path, keys: SiteKeys, *,
               chunk_size: int = envelope.DEFAULT_CHUNK_SIZE) -> "SiteStore":
        """Create ``<site-dir>/store/`` with an empty manifest; error if it exists."""
        root = Path(site_dir) / "store"
        if root.exists():
            raise StoreError(f"a store already exists at {root}; rule: create never overwrites a "
                             "store; fix: open it (SiteStore.open), or move it away first")
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = root.with_name(f".store{TEMP_PREFIX}{secrets.token_hex(8)}")
        tmp.mkdir(mode=0o700)
        (tmp / "objects").mkdir(mode=0o700)
        manifest = Manifest.new(keys.site_id, chunk_size)
        store = cls(tmp, keys, manifest)
        store._write(MANIFEST_ID, manifest.to_json(), tmp / MANIFEST_ID)
        fsync_dir(tmp / "objects")
        try:
            os.rename(tmp, root)  # the store appears whole or not at all
        except OSError as exc:
            raise StoreError(f"a store appeared at {root} while creating one; fix: open it") from exc
        fsync_dir(root.parent)
        return cls(root, keys, manifest)

    @classmethod
    def open(cls, site_dir: Path, keys: SiteKeys) -> "SiteStore":
        """Open the store; a kek that does not open it raises one StoreError and changes nothing."""
        root = Path(site_dir) / "store"
        return cls(root, keys, _read_manifest(root, keys))

    @classmethod
    def open_or_create(cls, site_dir: Path, keys: SiteKeys) -> "SiteStore":
        root = Path(site_dir) / "store"
        return cls.open(site_dir, keys) if root.exists() else cls.create(site_dir, keys)

    def close(self) -> None:
        """Release the writer lock; records added but not committed become orphans."""
        self._pending.clear()
        self._unsynced.clear()
        self._set_manifest(self._manifest)
        self._lock.release()

    def __enter__(self) -> "SiteStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ------------------------------------------------------------------

    def has_source(self, source_key: str) -> bool:
        """Whether a source (the caller's HMAC of it) is stored, committed or pending."""
        return source_key in self._sources

    def add_image(self, *, source_key: str, dicom: Plaintext, tensor: np.ndarray, patient_key: str,
                  label: int, meta: Mapping, split: str | None = None) -> ImageRecord:
        """Encrypt and write the image's two objects; the record waits for commit(), which
        makes them durable before the manifest names them."""
        _check_source_key(source_key)
        self._begin_write()
        if self.has_source(source_key):
            raise _duplicate_source()
        sealed = self.seal_image(dicom=dicom, tensor=tensor, patient_key=patient_key, label=label,
                                 meta=meta, split=split)
        return self.add_sealed(source_key, sealed)

    def seal_image(self, *, dicom: Plaintext, tensor: np.ndarray, patient_key: str, label: int,
                   meta: Mapping, split: str | None = None) -> SealedImage:
        """Encrypt and write an image's two objects without adding them to this store's
        state, for a process forked from this writer (ingest workers); the writer names them
        with :meth:`add_sealed` or removes them with :meth:`discard_sealed`. Until then they
        are orphans, which the next writer collects."""
        if not isinstance(dicom, BYTES_LIKE) and not (
                isinstance(dicom, (list, tuple)) and all(isinstance(part, BYTES_LIKE) for part in dicom)):
            raise StoreError(f"dicom must be bytes (or a list of its parts), not {type(dicom).__name__}; "
                             "fix: pass the de-identified file's bytes")
        if not self._lock.held:
            raise StoreError("objects are written only by the store's writer; fix: call it from "
                             "the ingest that opened the store (or a process it forked)")
        record = check_record(secrets.token_hex(16), patient_key, label, meta, split)
        sealed = SealedImage(record=record, dicom_object=secrets.token_hex(16),
                             tensor_object=secrets.token_hex(16))
        for object_id, plaintext in ((sealed.dicom_object, dicom),
                                     (sealed.tensor_object, encode_tensor(tensor))):
            self._write(object_id, plaintext, durable=False)
        return sealed

    def add_sealed(self, source_key: str, sealed: SealedImage) -> ImageRecord:
        """Name a sealed image's objects as the next record; commit() makes it durable."""
        _check_source_key(source_key)
        self._begin_write()
        if self.has_source(source_key):
            raise _duplicate_source()
        entry = Entry(record=sealed.record, source_key=source_key,
                      dicom_object=sealed.dicom_object, tensor_object=sealed.tensor_object)
        self._unsynced += [self._objects / entry.dicom_object, self._objects / entry.tensor_object]
        self._pending[entry.record.image_id] = entry
        self._index[entry.record.image_id] = entry
        self._sources.add(source_key)
        return entry.record

    def discard_sealed(self, sealed: SealedImage) -> None:
        """Remove a sealed image's objects that will not be added (a duplicate source)."""
        for object_id in (sealed.dicom_object, sealed.tensor_object):
            (self._objects / object_id).unlink(missing_ok=True)

    def commit(self) -> None:
        """Make the pending records' objects durable, then atomically write the manifest
        with every pending record."""
        if not self._pending:
            return
        sync_files(self._objects, self._unsynced)
        self._unsynced.clear()
        manifest = self._manifest.extended(tuple(self._pending.values()))
        self._write(MANIFEST_ID, manifest.to_json(), self._root / MANIFEST_ID)
        self._pending.clear()
        self._set_manifest(manifest)

    def collect_orphans(self) -> int:
        """Delete objects the manifest does not name (and leftover temp files); returns the count."""
        self._begin_write()
        doomed = self._debris() + [self._objects / n for n in self._orphans()]
        for path in doomed:
            path.unlink(missing_ok=True)
        if doomed:  # nothing removed, nothing to make durable
            fsync_dir(self._objects)
            fsync_dir(self._root)
        return len(doomed)

    def rewrap(self, new_keys: SiteKeys) -> None:
        """Re-wrap every data key under ``new_keys.kek`` (headers only; data untouched)."""
        from client.store.rotation import rewrap_files

        if (new_keys.site_id, new_keys.site_secret) != (self._keys.site_id, self._keys.site_secret):
            raise StoreError("the new keys belong to another site; rule: rotation keeps the site id "
                             "and secret; fix: rotate with `fedrad-site keys rotate`")
        self._begin_write()
        rewrap_files(self._root, self._keys, new_keys)
        self._keys = new_keys

    # --- reading ------------------------------------------------------------------

    def records(self) -> list[ImageRecord]:
        """The committed records, in ingest order."""
        return [e.record for e in self._manifest.entries]

    def read_tensor(self, image_id: str) -> np.ndarray:
        entry = self._entry(image_id)
        return decode_tensor(self._read(entry.tensor_object), entry.tensor_object)

    def read_dicom(self, image_id: str) -> bytes:
        return bytes(self._read(self._entry(image_id).dicom_object))

    def verify(self) -> list[str]:
        """Authenticate the manifest and every object; returns problems, empty when all is well."""
        try:
            manifest = _read_manifest(self._root, self._keys)
        except StoreError as exc:
            return [f"manifest: {exc}"]
        problems: list[str] = []
        entries = list(manifest.entries) + list(self._pending.values())
        for e in entries:
            for oid, decode in ((e.dicom_object, None), (e.tensor_object, decode_tensor)):
                if not (self._objects / oid).exists():
                    problems.append(f"missing: object {oid} (image {e.record.image_id}); "
                                    "fix: restore it from backup or re-ingest its source")
                    continue
                try:
                    payload = self._read(oid)
                    if decode is not None:
                        decode(payload, oid)
                except StoreError as exc:
                    problems.append(f"failed authentication: object {oid} (image "
                                    f"{e.record.image_id}): {exc}")
        named = {oid for e in entries for oid in (e.dicom_object, e.tensor_object)}
        for name in self._orphans(named):
            problems.append(f"orphan: object {name} is not in the manifest (an ingest that never "
                            "committed); fix: collect_orphans(), e.g. by running the ingest again")
        for path in self._debris():
            problems.append(f"temp: leftover temp file {path.name} (an interrupted write); "
                            "fix: collect_orphans()")
        return problems

    def info(self) -> dict:
        """Counts and sizes, format version, key id, created — never a PHI value."""
        records = self.records()
        files = [self._root / MANIFEST_ID] + [p for p in self._objects.iterdir()
                                              if not p.name.startswith(TEMP_PREFIX)]
        return {
            "format_version": envelope.FORMAT_VERSION,
            "site_id": self._keys.site_id,
            "key_id": self._keys.key_id,
            "created": self._manifest.created,
            "generation": self._manifest.generation,
            "images": len(records),
            "patients": len({r.patient_key for r in records}),
            "positives": sum(r.label for r in records),
            "pending": len(self._pending),
            "objects": len(files) - 1,
            "bytes": sum(p.stat().st_size for p in files if p.is_file()),
            "chunk_size": self._manifest.chunk_size,
        }

    def export_dicom(self, out_dir: Path) -> int:
        """Write each committed image's de-identified DICOM in clear as ``<image_id>.dcm``
        (for the site's own audit); returns the count."""
        out_dir = Path(out_dir)
        if out_dir.resolve().is_relative_to(self._root.resolve()):
            raise StoreError("the export directory is inside the encrypted store; rule: nothing "
                             "decrypted is written into the store; fix: export elsewhere")
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        records = self.records()
        for record in records:
            write_atomic(out_dir / f"{record.image_id}.dcm", [self.read_dicom(record.image_id)],
                         sync_dir=False)
        fsync_dir(out_dir)
        return len(records)

    # --- internals ----------------------------------------------------------------

    @property
    def _objects(self) -> Path:
        return self._root / "objects"

    def _set_manifest(self, manifest: Manifest) -> None:
        self._manifest = manifest
        entries = list(manifest.entries) + list(self._pending.values())
        self._index = {e.record.image_id: e for e in entries}
        self._sources = {e.source_key for e in entries}

    def _entry(self, image_id: str) -> Entry:
        entry = self._index.get(image_id)
        if entry is None:
            raise StoreError(f"no image with id {image_id!r} in this store; fix: use an id from "
                             "records()")
        return entry

    def _begin_write(self) -> None:
        """Take the writer lock; on first taking it, reload the manifest another writer may
        have committed since open()."""
        if not self._lock.held:
            self._lock.acquire()
            self._set_manifest(_read_manifest(self._root, self._keys))

    def _write(self, object_id: str, plaintext: Plaintext, path: Path | None = None, *, durable: bool = True) -> None:
        parts = envelope.seal(plaintext, kek=self._keys.kek, key_id=self._keys.key_id,
                              site_id=self._keys.site_id, object_id=object_id,
                              chunk_size=self._manifest.chunk_size)
        write_atomic(path or self._objects / object_id, parts, temp_prefix=TEMP_PREFIX, durable=durable)

    def _read(self, object_id: str) -> bytearray:
        try:
            blob = (self._objects / object_id).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"object {object_id} is missing; fix: restore it from backup or "
                             "re-ingest its source", object_id=object_id) from None
        return envelope.unseal(blob, kek=self._keys.kek, key_id=self._keys.key_id,
                               site_id=self._keys.site_id, object_id=object_id)

    def _orphans(self, named: set[str] | None = None) -> list[str]:
        if named is None:
            named = {oid for e in self._index.values() for oid in (e.dicom_object, e.tensor_object)}
        return sorted(p.name for p in self._objects.iterdir()
                      if not p.name.startswith(TEMP_PREFIX) and p.name not in named)

    def _debris(self) -> list[Path]:
        return sorted(p for d in (self._root, self._objects) for p in d.iterdir()
                      if p.name.startswith(TEMP_PREFIX))


def _check_source_key(source_key: str) -> None:
    if not isinstance(source_key, str) or not source_key:
        raise StoreError("source_key must be a non-empty string; fix: pass the ingest's HMAC "
                         "of the source")


def _duplicate_source() -> StoreError:
    return StoreError("this source is already in the store; rule: ingest stores each source "
                      "once; fix: skip it (check has_source first)")


def _read_manifest(root: Path, keys: SiteKeys) -> Manifest:
    path = root / MANIFEST_ID
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"no store at {root} (store/manifest is missing); fix: create it by "
                         "ingesting (`fedrad-site ingest --site-dir DIR ...`), or restore it from "
                         "backup") from None
    header = envelope.parse_header(blob, MANIFEST_ID)
    if header.key_id != keys.key_id:
        raise StoreError(
            f"the key does not open this store: it is wrapped under key id {header.key_id}, the "
            f"kek given has key id {keys.key_id}; rule: a store opens only under its site's kek; "
            "fix: use the site's kek (client.keys.load_keys on this site's directory), or finish an "
            "interrupted rotation with `fedrad-site keys rotate`", object_id=MANIFEST_ID)
    payload = envelope.unseal(blob, kek=keys.kek, key_id=keys.key_id, site_id=keys.site_id,
                              object_id=MANIFEST_ID)
    manifest = Manifest.from_json(payload)
    if manifest.site_id != keys.site_id:
        raise StoreError("the manifest belongs to another site; fix: use this site's keys")
    return manifest
