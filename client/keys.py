"""Site keys: the key-encryption key (kek), the site secret and the site id.

``<site-dir>/keys/`` (directory 0700, every file 0600, created with O_EXCL):

- ``kek``               32 random bytes: the AES-256 key-encryption key. A passphrase
                        site has ``kek.scrypt.json`` instead (scrypt salt, parameters
                        and key id; no key material) and derives the kek on load.
- ``site-secret``       JSON: the 32-byte site secret (keyed UID remapping, patient keys)
                        wrapped under the kek with AES key wrap (RFC 3394), and the key id
                        it is wrapped under. Wrapped, so a passphrase site keeps nothing
                        usable on disk; re-wrapped on rotation, so the secret itself, and
                        every UID and patient key derived from it, never changes.
- ``site-id``           random hex; not secret.

The key id is a fingerprint, ``HMAC-SHA256(kek, "fedrad/key-id")[:16 hex]``, never key
material. Rotation is crash-safe and resumable; see :func:`rotate_kek`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from client.durable import fsync_dir, write_atomic, write_new

KEY_BYTES = 32
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
KEK_FILE, SCRYPT_FILE, SECRET_FILE, SITE_ID_FILE = "kek", "kek.scrypt.json", "site-secret", "site-id"
PENDING = ".new"  # suffix of the new kek while a rotation is in progress


class SiteKeyError(Exception):
    """A site key is missing, unsafe or does not fit; the message names the fix."""


@dataclass(frozen=True)
class SiteKeys:
    """The site's keys in memory. ``repr`` never shows key material."""

    kek: bytes = field(repr=False)
    key_id: str
    site_secret: bytes = field(repr=False)
    site_id: str


def key_id_of(kek: bytes) -> str:
    """Short public fingerprint of a kek (16 hex characters)."""
    return hmac.new(kek, b"fedrad/key-id", hashlib.sha256).hexdigest()[:16]


def init_keys(site_dir: Path, *, passphrase_env: str | None = None) -> SiteKeys:
    """Create the site's kek, site secret and site id; refuse to overwrite existing keys.

    With ``passphrase_env`` the kek is derived with scrypt from the passphrase held in
    that environment variable, and only the salt and parameters are written.
    """
    site_dir = Path(site_dir)
    keys_dir = site_dir / "keys"
    names = (KEK_FILE, SCRYPT_FILE, SECRET_FILE, SITE_ID_FILE, KEK_FILE + PENDING, SCRYPT_FILE + PENDING)
    existing = [n for n in names if (keys_dir / n).exists()]
    if existing:
        raise SiteKeyError(
            f"site keys already exist in {keys_dir} ({', '.join(existing)}); rule: init never "
            f"overwrites keys; fix: use them, or rotate the kek with "
            f"`fedrad-site keys rotate --site-dir {site_dir}`"
        )
    passphrase = _passphrase(passphrase_env) if passphrase_env is not None else None
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    name, blob, kek = _new_kek(passphrase)
    secret, site_id = secrets.token_bytes(KEY_BYTES), secrets.token_hex(16)
    try:
        write_new(keys_dir / name, blob)
        write_new(keys_dir / SECRET_FILE, _secret_blob(kek, secret))
        write_new(keys_dir / SITE_ID_FILE, (site_id + "\n").encode())
    except FileExistsError as exc:
        raise SiteKeyError(
            f"site keys appeared in {keys_dir} while initialising (another `keys init`?); "
            "rule: init never overwrites keys; fix: use the keys that are there"
        ) from exc
    fsync_dir(keys_dir)
    return SiteKeys(kek=kek, key_id=key_id_of(kek), site_secret=secret, site_id=site_id)


def load_keys(site_dir: Path, *, passphrase_env: str | None = None) -> SiteKeys:
    """Load the site's keys, refusing key files that group or others can access."""
    site_dir = Path(site_dir)
    keys_dir = site_dir / "keys"
    pending = [n + PENDING for n in (KEK_FILE, SCRYPT_FILE) if (keys_dir / (n + PENDING)).exists()]
    if pending:
        raise SiteKeyError(
            f"a kek rotation was interrupted ({keys_dir / pending[0]} exists); rule: keys load "
            f"only when no rotation is pending; fix: run `fedrad-site keys rotate --site-dir "
            f"{site_dir}` again to finish it"
        )
    kek = _load_kek(keys_dir, "", passphrase_env)
    if kek is None:
        raise SiteKeyError(
            f"no site keys in {keys_dir} (keys/kek is missing); rule: a site needs its kek "
            f"to open its store; fix: run `fedrad-site keys init --site-dir {site_dir}` "
            "(or restore keys/ from backup)"
        )
    key_id = key_id_of(kek)
    secret = _unwrap_secret(keys_dir, {key_id: kek})
    return SiteKeys(kek=kek, key_id=key_id, site_secret=secret, site_id=_read_site_id(keys_dir))


def rotate_kek(
    site_dir: Path,
    *,
    rewrap: Callable[[SiteKeys, SiteKeys], None],
    passphrase_env: str | None = None,
    new_passphrase_env: str | None = None,
) -> SiteKeys:
    """Replace the kek; ``rewrap(old, new)`` re-wraps everything encrypted under it.

    Procedure (each step durable before the next):

    1. write the new kek as ``keys/kek.new`` (``kek.scrypt.json.new``); while it exists
       a rotation is in progress and :func:`load_keys` refuses to load;
    2. ``rewrap(old, new)``: re-wrap every store object under the new kek; it must be
       idempotent (skip what is already under ``new.key_id``);
    3. replace ``keys/site-secret`` with the secret wrapped under the new kek;
    4. rename ``kek.new`` over ``kek`` — the commit point; the old kek is gone.

    Until step 4 both keks are on disk and every object is under one of them, so a
    crash anywhere is recovered by running this function again: it finds ``kek.new``
    and finishes the rotation with it. A passphrase site keeps its mode: the new kek
    is derived from ``new_passphrase_env`` (default: ``passphrase_env``) and a new salt.
    """
    site_dir = Path(site_dir)
    keys_dir = site_dir / "keys"
    with _rotation_lock(keys_dir):
        old_kek = _load_kek(keys_dir, "", passphrase_env)
        if old_kek is None:
            raise SiteKeyError(
                f"no site keys in {keys_dir}; rule: only an existing kek can be rotated; "
                f"fix: run `fedrad-site keys init --site-dir {site_dir}`"
            )
        derived = (keys_dir / SCRYPT_FILE).exists()
        new_env = (new_passphrase_env or passphrase_env) if derived else None
        new_kek = _load_kek(keys_dir, PENDING, new_env)
        if new_kek is None:  # fresh rotation (a resumed one reuses kek.new)
            name, blob, new_kek = _new_kek(_passphrase(new_env) if derived else None)
            write_atomic(keys_dir / (name + PENDING), [blob])
        old_id, new_id = key_id_of(old_kek), key_id_of(new_kek)
        secret = _unwrap_secret(keys_dir, {old_id: old_kek, new_id: new_kek})
        site_id = _read_site_id(keys_dir)
        old = SiteKeys(kek=old_kek, key_id=old_id, site_secret=secret, site_id=site_id)
        new = SiteKeys(kek=new_kek, key_id=new_id, site_secret=secret, site_id=site_id)
        rewrap(old, new)
        if _read_json(keys_dir / SECRET_FILE).get("key_id") != new_id:
            write_atomic(keys_dir / SECRET_FILE, [_secret_blob(new_kek, secret)])
        name = SCRYPT_FILE if derived else KEK_FILE
        os.replace(keys_dir / (name + PENDING), keys_dir / name)
        fsync_dir(keys_dir)
        return new


# --- kek sources -------------------------------------------------------------------


def _new_kek(passphrase: bytes | None) -> tuple[str, bytes, bytes]:
    """A fresh kek: (file name, file content, kek)."""
    if passphrase is None:
        kek = secrets.token_bytes(KEY_BYTES)
        return KEK_FILE, kek, kek
    params = {"kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
              "salt": secrets.token_hex(16), "length": KEY_BYTES}
    kek = _derive(params, passphrase)
    params["key_id"] = key_id_of(kek)
    return SCRYPT_FILE, json.dumps(params, sort_keys=True).encode(), kek


def _load_kek(keys_dir: Path, suffix: str, passphrase_env: str | None) -> bytes | None:
    """The kek stored (or derived) under ``keys_dir`` with ``suffix``; None if absent."""
    raw, derived = keys_dir / (KEK_FILE + suffix), keys_dir / (SCRYPT_FILE + suffix)
    if raw.exists() and derived.exists():
        raise SiteKeyError(
            f"both {raw.name} and {derived.name} exist in {keys_dir}; rule: a site has one kek "
            "source; fix: restore keys/ from backup"
        )
    if derived.exists():
        if passphrase_env is None:
            raise SiteKeyError(
                f"this site's kek is derived from a passphrase ({derived.name}); rule: the "
                "passphrase is needed to open the site; fix: pass --passphrase-env VAR"
            )
        params = _read_scrypt(derived)
        kek = _derive(params, _passphrase(passphrase_env))
        if not hmac.compare_digest(key_id_of(kek), params["key_id"]):
            raise SiteKeyError(
                f"the passphrase in ${passphrase_env} does not derive this site's kek "
                f"(key id {params['key_id']}); rule: the kek comes from the site's passphrase; "
                f"fix: set {passphrase_env} to the site's passphrase"
            )
        return kek
    if raw.exists():
        if passphrase_env is not None:
            raise SiteKeyError(
                f"this site's kek is stored in {raw}, not derived from a passphrase; rule: a "
                "site has one kek source; fix: drop --passphrase-env"
            )
        _check_private(raw)
        kek = raw.read_bytes()
        if len(kek) != KEY_BYTES:
            raise SiteKeyError(
                f"{raw} holds {len(kek)} bytes; rule: a kek is {KEY_BYTES} bytes; "
                "fix: restore keys/ from backup"
            )
        return kek
    return None


def _derive(params: dict, passphrase: bytes) -> bytes:
    kdf = Scrypt(salt=bytes.fromhex(params["salt"]), length=KEY_BYTES,
                 n=params["n"], r=params["r"], p=params["p"])
    return kdf.derive(passphrase)


def _read_scrypt(path: Path) -> dict:
    p = _read_json(path)
    n, r, par, salt = p.get("n"), p.get("r"), p.get("p"), p.get("salt")
    ok = (
        p.get("kdf") == "scrypt" and p.get("length") == KEY_BYTES
        and isinstance(n, int) and 2**14 <= n <= 2**20 and n & (n - 1) == 0
        and isinstance(r, int) and 1 <= r <= 32 and isinstance(par, int) and 1 <= par <= 16
        and isinstance(salt, str) and len(salt) >= 32 and isinstance(p.get("key_id"), str)
    )
    if not ok:
        raise SiteKeyError(
            f"{path} has unsupported scrypt parameters; rule: scrypt, n a power of two in "
            "2**14..2**20, r<=32, p<=16, salt >= 16 bytes; fix: restore keys/ from backup"
        )
    try:
        bytes.fromhex(salt)
    except ValueError as exc:
        raise SiteKeyError(f"{path} has a salt that is not hex; fix: restore keys/ from backup") from exc
    return p


def _passphrase(env: str | None) -> bytes:
    value = os.environ.get(env or "", "")
    if not value:
        raise SiteKeyError(
            f"the passphrase environment variable {env!r} is unset or empty; rule: a "
            f"passphrase-derived kek needs a non-empty passphrase; fix: export {env}=... first"
        )
    return value.encode("utf-8")


# --- site secret and id ------------------------------------------------------------


def _secret_blob(kek: bytes, secret: bytes) -> bytes:
    doc = {"format": 1, "key_id": key_id_of(kek), "wrapped": aes_key_wrap(kek, secret).hex()}
    return json.dumps(doc, sort_keys=True).encode()


def _unwrap_secret(keys_dir: Path, keks: dict[str, bytes]) -> bytes:
    """Unwrap ``site-secret`` with whichever of ``keks`` (key id -> kek) it names."""
    path = keys_dir / SECRET_FILE
    if not path.exists():
        raise SiteKeyError(
            f"{path} is missing; rule: the site secret is needed for UID remapping and patient "
            "keys; fix: restore keys/ from backup (a new secret would orphan every patient key)"
        )
    _check_private(path)
    doc = _read_json(path)
    kek = keks.get(doc.get("key_id", ""))
    if kek is None:
        raise SiteKeyError(
            f"{path} is wrapped under key id {doc.get('key_id')!r}, not under the kek given "
            f"({', '.join(keks)}); rule: the site secret is wrapped under the site's kek; "
            "fix: restore the matching keys/kek from backup"
        )
    try:
        return aes_key_unwrap(kek, bytes.fromhex(doc.get("wrapped", "")))
    except (InvalidUnwrap, ValueError) as exc:
        raise SiteKeyError(
            f"{path} failed authentication under its kek; rule: the site secret must unwrap "
            "under the site's kek; fix: restore keys/ from backup"
        ) from exc


def _read_site_id(keys_dir: Path) -> str:
    path = keys_dir / SITE_ID_FILE
    try:
        site_id = path.read_text().strip()
    except FileNotFoundError as exc:
        raise SiteKeyError(f"{path} is missing; fix: restore keys/ from backup") from exc
    if not site_id or any(c not in "0123456789abcdef" for c in site_id):
        raise SiteKeyError(f"{path} is not a hex site id; fix: restore keys/ from backup")
    return site_id


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SiteKeyError(f"{path} is unreadable or not JSON; fix: restore keys/ from backup") from exc
    if not isinstance(doc, dict):
        raise SiteKeyError(f"{path} is not a JSON object; fix: restore keys/ from backup")
    return doc


# --- files ---------------------------------------------------------------------------


def _check_private(path: Path) -> None:
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        raise SiteKeyError(
            f"{path} is accessible by group or others (mode {mode:o}); rule: key files are "
            f"private to their owner (0600); fix: chmod 600 {path} (and consider rotating the "
            "kek: `fedrad-site keys rotate`)"
        )


@contextlib.contextmanager
def _rotation_lock(keys_dir: Path) -> Iterator[None]:
    if not keys_dir.is_dir():
        yield
        return
    fd = os.open(keys_dir / ".rotate.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise SiteKeyError(
                f"another kek rotation is running on {keys_dir}; rule: one rotation at a "
                "time; fix: wait for it to finish"
            ) from exc
        yield
    finally:
        os.close(fd)
