"""Envelope encryption of one store object.

A random 256-bit data key per object encrypts the plaintext with AES-256-GCM in chunks;
the data key is wrapped under the site's kek with AES key wrap (RFC 3394).

Object file = 84-byte header, then the chunks::

    offset size field
     0      8   magic b"FEDRADOB"
     8      1   format version (1)
     9      1   AEAD id (1 = AES-256-GCM)
    10      1   key-wrap id (1 = AES key wrap, RFC 3394)
    11      1   reserved (0)
    12      4   chunk size: plaintext bytes per chunk (u32, big-endian)
    16     12   base nonce (random per object)
    28     16   key id of the kek wrapping the data key (ASCII hex)
    44     40   the 32-byte data key wrapped under the kek
    84    ...   chunks: ciphertext || 16-byte GCM tag. Every chunk but the last holds
                exactly chunk-size plaintext bytes, the last 0..chunk-size (an empty
                object is one empty chunk).

Bytes 0-27 (the fixed part) are associated data of every chunk. Bytes 28-83 (the key
slot) are authenticated by the key wrap and checked against the kek's key id; they are
the only bytes key rotation rewrites. Chunk ``i`` uses nonce ``base_nonce XOR i`` and
associated data ``fixed part || u16 len || site id || u16 len || object id || u64 i ||
u8 final``, so flipping any byte, moving an object to another name or site, reordering,
dropping or appending chunks all fail authentication.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from client.store.errors import StoreError

MAGIC = b"FEDRADOB"
FORMAT_VERSION = 1
AEAD_AES256_GCM = 1
WRAP_AES_KW = 1
FIXED_LEN, HEADER_LEN = 28, 84
KEY_ID_LEN, WRAPPED_LEN, NONCE_LEN, TAG_LEN, DATA_KEY_LEN = 16, 40, 12, 16, 32
DEFAULT_CHUNK_SIZE = 1 << 20
MAX_CHUNK_SIZE = 1 << 26
_FIXED = struct.Struct(">8sBBBBI12s")
BYTES_LIKE = (bytes, bytearray, memoryview)
Plaintext = bytes | bytearray | memoryview | Sequence[bytes | bytearray | memoryview]
_RESTORE = "fix: restore the object from backup or re-ingest its source, then run `fedrad-site store verify`"


@dataclass(frozen=True)
class Header:
    fixed: bytes  # bytes 0-27, associated data of every chunk
    chunk_size: int
    base_nonce: bytes
    key_id: str
    wrapped_key: bytes


def parse_header(blob: bytes, object_id: str) -> Header:
    """Parse and check the header at the start of ``blob`` (at least the header bytes)."""
    if len(blob) < HEADER_LEN:
        raise StoreError(f"object {object_id} is truncated (no complete header); rule: every object "
                         f"starts with a {HEADER_LEN}-byte header; {_RESTORE}", object_id=object_id)
    magic, version, aead, wrap, reserved, chunk_size, nonce = _FIXED.unpack_from(blob, 0)
    if magic != MAGIC:
        raise StoreError(f"object {object_id} is not a fedrad store object (bad magic); {_RESTORE}",
                         object_id=object_id)
    if (version, aead, wrap, reserved) != (FORMAT_VERSION, AEAD_AES256_GCM, WRAP_AES_KW, 0):
        raise StoreError(
            f"object {object_id} has an unsupported header (format {version}, aead {aead}, wrap "
            f"{wrap}, reserved {reserved}); rule: this build reads format {FORMAT_VERSION} with "
            "AES-256-GCM and AES key wrap; fix: upgrade fedrad, or restore the object from backup",
            object_id=object_id)
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise StoreError(f"object {object_id} has an invalid chunk size; {_RESTORE}", object_id=object_id)
    raw_id = bytes(blob[FIXED_LEN:FIXED_LEN + KEY_ID_LEN])
    if any(c not in b"0123456789abcdef" for c in raw_id):
        raise StoreError(f"object {object_id} has a corrupt key id; {_RESTORE}", object_id=object_id)
    return Header(fixed=bytes(blob[:FIXED_LEN]), chunk_size=chunk_size, base_nonce=nonce,
                  key_id=raw_id.decode("ascii"),
                  wrapped_key=bytes(blob[FIXED_LEN + KEY_ID_LEN:HEADER_LEN]))


def seal(plaintext: Plaintext, *, kek: bytes, key_id: str, site_id: str, object_id: str,
         chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
    """Encrypt ``plaintext`` (bytes, or a sequence of byte strings taken as their
    concatenation, which is never built) under a fresh data key; yields the file's parts
    (header, then each chunk as it is encrypted, so a writer holds one chunk at a time)."""
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise StoreError(f"chunk size {chunk_size} is out of range; rule: 1..{MAX_CHUNK_SIZE} bytes; "
                         "fix: use the default chunk size")
    views = [memoryview(part).cast("B") for part in
             ((plaintext,) if isinstance(plaintext, BYTES_LIKE) else plaintext)]
    data_key = AESGCM.generate_key(bit_length=256)
    base_nonce = secrets.token_bytes(NONCE_LEN)
    fixed = _FIXED.pack(MAGIC, FORMAT_VERSION, AEAD_AES256_GCM, WRAP_AES_KW, 0, chunk_size, base_nonce)
    header = fixed + _key_slot(kek, key_id, data_key)
    return _sealed(header, AESGCM(data_key), views, chunk_size, base_nonce, fixed, site_id, object_id)


def _sealed(header: bytes, aead: AESGCM, views: list[memoryview], chunk_size: int, base_nonce: bytes,
            fixed: bytes, site_id: str, object_id: str) -> Iterator[bytes]:
    yield header
    n = max(1, -(-sum(len(v) for v in views) // chunk_size))
    for i, chunk in enumerate(_chunks(views, chunk_size)):
        yield aead.encrypt(_nonce(base_nonce, i), chunk, _aad(fixed, site_id, object_id, i, i == n - 1))


def _chunks(views: list[memoryview], chunk_size: int) -> Iterator[bytes | memoryview]:
    """The consecutive ``chunk_size`` pieces of the views' concatenation (the last one
    shorter, or one empty piece for an empty plaintext): slices where a piece lies in one
    view, joined copies only where it spans several."""
    pending: list[memoryview] = []
    filled, pieces = 0, 0
    for view in views:
        while view:
            if not pending and len(view) >= chunk_size:
                yield view[:chunk_size]
                pieces, view = pieces + 1, view[chunk_size:]
                continue
            take = min(chunk_size - filled, len(view))
            pending.append(view[:take])
            filled, view = filled + take, view[take:]
            if filled == chunk_size:
                yield b"".join(pending)
                pieces, pending, filled = pieces + 1, [], 0
    if pending or not pieces:
        yield b"".join(pending)


def unseal(blob: bytes, *, kek: bytes, key_id: str, site_id: str, object_id: str) -> bytearray:
    """Authenticate and decrypt a whole object file; StoreError naming ``object_id`` if not."""
    header = parse_header(blob, object_id)
    data_key = unwrap_data_key(header, kek=kek, key_id=key_id, object_id=object_id)
    body = memoryview(blob)[HEADER_LEN:]
    step = header.chunk_size + TAG_LEN
    n = max(1, -(-len(body) // step))
    if len(body) - (n - 1) * step < TAG_LEN:
        raise _failed(object_id, n - 1)
    aead, out = AESGCM(data_key), bytearray()
    for i in range(n):
        try:
            out += aead.decrypt(_nonce(header.base_nonce, i), body[i * step:(i + 1) * step],
                                _aad(header.fixed, site_id, object_id, i, i == n - 1))
        except InvalidTag:
            raise _failed(object_id, i) from None
    return out


def unwrap_data_key(header: Header, *, kek: bytes, key_id: str, object_id: str) -> bytes:
    if header.key_id != key_id:
        raise StoreError(
            f"object {object_id} is wrapped under key id {header.key_id}, not the given kek "
            f"({key_id}); rule: objects open only under the site's current kek; fix: use the "
            "site's kek, or finish an interrupted rotation with `fedrad-site keys rotate`",
            object_id=object_id)
    try:
        return aes_key_unwrap(kek, header.wrapped_key)
    except InvalidUnwrap:
        raise StoreError(f"object {object_id} failed authentication (its wrapped data key does not "
                         f"unwrap under kek {key_id}); {_RESTORE}", object_id=object_id) from None


def rewrap_header(header: Header, *, old_kek: bytes, old_key_id: str, new_kek: bytes,
                  new_key_id: str, object_id: str) -> bytes:
    """The same header with its data key re-wrapped under the new kek."""
    data_key = unwrap_data_key(header, kek=old_kek, key_id=old_key_id, object_id=object_id)
    return header.fixed + _key_slot(new_kek, new_key_id, data_key)


def _key_slot(kek: bytes, key_id: str, data_key: bytes) -> bytes:
    raw_id = key_id.encode("ascii")
    if len(raw_id) != KEY_ID_LEN or len(kek) != DATA_KEY_LEN:
        raise StoreError("the kek or its key id has the wrong size; rule: 32-byte kek, 16-hex key id; "
                         "fix: load keys with client.keys.load_keys")
    return raw_id + aes_key_wrap(kek, data_key)


def _nonce(base: bytes, index: int) -> bytes:
    return (int.from_bytes(base, "big") ^ index).to_bytes(NONCE_LEN, "big")


def _aad(fixed: bytes, site_id: str, object_id: str, index: int, final: bool) -> bytes:
    site, obj = site_id.encode(), object_id.encode()
    return b"".join((fixed, struct.pack(">H", len(site)), site, struct.pack(">H", len(obj)), obj,
                     struct.pack(">QB", index, 1 if final else 0)))


def _failed(object_id: str, index: int) -> StoreError:
    return StoreError(
        f"object {object_id} failed authentication at chunk {index} (tampered, truncated, "
        f"reordered, or moved from another name or site); rule: every chunk must authenticate "
        f"under its data key; {_RESTORE}", object_id=object_id)
