"""Key rotation for the store: re-wrap data keys under a new kek without re-encrypting data.

:func:`rotate_site_kek` is the front door (``fedrad-site keys rotate``): it runs
:func:`client.keys.rotate_kek` with :func:`rewrap_store`. Re-wrapping is idempotent and
atomic per object (only the 84-byte header changes; the body is copied byte for byte), so
an interrupted rotation is finished by running it again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from client.keys import SiteKeys, rotate_kek
from client.store import envelope
from client.store.errors import StoreError
from client.durable import fsync_dir, write_atomic
from client.store.files import TEMP_PREFIX, WriterLock

MANIFEST_ID = "manifest"


def rotate_site_kek(site_dir: Path, *, passphrase_env: str | None = None,
                    new_passphrase_env: str | None = None) -> SiteKeys:
    """Rotate the site's kek and re-wrap its store (if any); returns the new keys."""
    return rotate_kek(site_dir, passphrase_env=passphrase_env, new_passphrase_env=new_passphrase_env,
                      rewrap=lambda old, new: rewrap_store(site_dir, old, new))


def rewrap_store(site_dir: Path, old: SiteKeys, new: SiteKeys) -> int:
    """Re-wrap every file of ``<site-dir>/store`` from ``old`` to ``new`` (no store: nothing
    to do); returns how many files changed."""
    root = Path(site_dir) / "store"
    if not (root / MANIFEST_ID).exists():
        return 0
    with WriterLock(root):
        return rewrap_files(root, old, new)


def rewrap_files(root: Path, old: SiteKeys, new: SiteKeys) -> int:
    """Re-wrap objects then the manifest; files already under ``new`` are checked and kept.

    Leftover temp files are deleted first: they may hold ciphertext under the old kek,
    which must open nothing afterwards. The caller holds the writer lock.
    """
    objects = root / "objects"
    for directory in (root, objects):
        for path in directory.iterdir():
            if path.name.startswith(TEMP_PREFIX):
                path.unlink()
    names = sorted(p.name for p in objects.iterdir())
    changed = sum(rewrap_object(objects / name, name, old, new) for name in names)
    changed += rewrap_object(root / MANIFEST_ID, MANIFEST_ID, old, new)
    fsync_dir(objects)
    fsync_dir(root)
    return changed


def rewrap_object(path: Path, object_id: str, old: SiteKeys, new: SiteKeys) -> bool:
    """Re-wrap one object's data key (atomic: temp file + rename); False if already done."""
    with open(path, "rb") as f:
        header = envelope.parse_header(f.read(envelope.HEADER_LEN), object_id)
    if header.key_id == new.key_id:
        envelope.unwrap_data_key(header, kek=new.kek, key_id=new.key_id, object_id=object_id)
        return False
    if header.key_id != old.key_id:
        raise StoreError(
            f"object {object_id} is wrapped under key id {header.key_id}, neither the current "
            f"({old.key_id}) nor the new kek ({new.key_id}); rule: every object is under the "
            "site's kek; fix: restore the object from backup, then rotate again", object_id=object_id)
    head = envelope.rewrap_header(header, old_kek=old.kek, old_key_id=old.key_id, new_kek=new.kek,
                                  new_key_id=new.key_id, object_id=object_id)
    write_atomic(path, _with_body(head, path), temp_prefix=TEMP_PREFIX, sync_dir=False)
    return True


def _with_body(head: bytes, path: Path) -> Iterator[bytes]:
    yield head
    with open(path, "rb") as f:
        f.seek(envelope.HEADER_LEN)
        while block := f.read(1 << 20):
            yield block

