"""Envelope format: round trip, fresh data keys, and every tamper case failing authentication."""

from __future__ import annotations

import secrets

import pytest

from client.keys import key_id_of
from client.store import StoreError
from client.store.envelope import HEADER_LEN, TAG_LEN, parse_header, seal, unseal

KEK = secrets.token_bytes(32)
KID = key_id_of(KEK)
SITE = "ab" * 16
OID = "cd" * 16
CHUNK = 32
STEP = CHUNK + TAG_LEN


def _seal(pt: bytes, oid: str = OID) -> bytes:
    return b"".join(seal(pt, kek=KEK, key_id=KID, site_id=SITE, object_id=oid, chunk_size=CHUNK))


def _open(blob: bytes, oid: str = OID, site: str = SITE, kek: bytes = KEK, kid: str = KID) -> bytes:
    return bytes(unseal(blob, kek=kek, key_id=kid, site_id=site, object_id=oid))


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5])
def test_round_trip_at_chunk_boundaries(size):
    pt = secrets.token_bytes(size)
    blob = _seal(pt)
    assert len(blob) == HEADER_LEN + len(pt) + TAG_LEN * max(1, -(-size // CHUNK))
    assert _open(blob) == pt


def test_same_plaintext_twice_gives_different_keys_and_ciphertext():
    pt = b"same plaintext " * 10
    a, b = _seal(pt), _seal(pt)
    ha, hb = parse_header(a, OID), parse_header(b, OID)
    assert ha.wrapped_key != hb.wrapped_key and ha.base_nonce != hb.base_nonce
    assert a[HEADER_LEN:] != b[HEADER_LEN:]
    assert pt[:16] not in a


def test_header_layout():
    blob = _seal(b"x" * 100)
    h = parse_header(blob, OID)
    assert blob[:8] == b"FEDRADOB" and blob[8:12] == bytes([1, 1, 1, 0])
    assert int.from_bytes(blob[12:16], "big") == CHUNK == h.chunk_size
    assert blob[28:44].decode() == KID == h.key_id and len(h.wrapped_key) == 40


def test_flipping_any_byte_fails_and_names_the_object():
    pt = b"secret pixel data " * 5  # 90 bytes: 3 chunks
    blob = _seal(pt)
    for i in range(len(blob)):
        for bit in (0x01, 0x80):
            bad = bytearray(blob)
            bad[i] ^= bit
            with pytest.raises(StoreError) as err:
                _open(bytes(bad))
            assert OID in str(err.value) and b"secret" not in str(err.value).encode()


def test_reordered_chunks_fail():
    blob = _seal(secrets.token_bytes(3 * CHUNK))
    head, c = blob[:HEADER_LEN], [blob[HEADER_LEN + i * STEP:HEADER_LEN + (i + 1) * STEP] for i in range(3)]
    for order in ([1, 0, 2], [0, 2, 1], [2, 1, 0]):
        with pytest.raises(StoreError, match="failed authentication"):
            _open(head + b"".join(c[i] for i in order))


def test_truncation_and_extension_fail():
    blob = _seal(secrets.token_bytes(3 * CHUNK))
    cases = {
        "drop last chunk": blob[:-STEP],
        "drop two chunks": blob[:-2 * STEP],
        "cut mid chunk": blob[:-5],
        "header only": blob[:HEADER_LEN],
        "half header": blob[:40],
        "append a chunk": blob + blob[HEADER_LEN:HEADER_LEN + STEP],
        "duplicate first chunk": blob[:HEADER_LEN + STEP] + blob[HEADER_LEN:],
    }
    for name, bad in cases.items():
        with pytest.raises(StoreError):
            _open(bad)
            pytest.fail(name)


def test_object_bound_to_its_name_and_site():
    blob = _seal(b"payload")
    with pytest.raises(StoreError, match="failed authentication"):
        _open(blob, oid="ef" * 16)
    with pytest.raises(StoreError, match="failed authentication"):
        _open(blob, site="01" * 16)


def test_wrong_kek_fails_even_with_a_forged_key_id():
    blob = _seal(b"payload")
    other = secrets.token_bytes(32)
    with pytest.raises(StoreError, match="not the given kek"):
        _open(blob, kek=other, kid=key_id_of(other))
    with pytest.raises(StoreError, match="does not unwrap"):
        _open(blob, kek=other, kid=KID)  # right key id, wrong key


def test_header_fields_are_bound_even_where_the_layout_still_parses():
    blob = _seal(b"short")  # one chunk: a changed chunk size or reserved byte would still parse
    for i in range(HEADER_LEN):
        for bit in range(8):
            bad = bytearray(blob)
            bad[i] ^= 1 << bit
            with pytest.raises(StoreError):
                _open(bytes(bad))


@pytest.mark.parametrize("sizes", [(), (0,), (0, 0), (5, 0, CHUNK), (CHUNK - 1, 1, CHUNK), (1, 3 * CHUNK + 2, 7),
                                   (CHUNK, CHUNK), (2 * CHUNK + 5, 0, 40, 1)])
def test_parts_seal_as_their_concatenation(sizes):
    parts = [secrets.token_bytes(n) for n in sizes]
    joined = b"".join(parts)
    blob = b"".join(seal(parts, kek=KEK, key_id=KID, site_id=SITE, object_id=OID, chunk_size=CHUNK))
    assert len(blob) == HEADER_LEN + len(joined) + TAG_LEN * max(1, -(-len(joined) // CHUNK))
    assert _open(blob) == joined


def test_a_bad_chunk_size_fails_at_the_call_before_anything_is_written():
    with pytest.raises(StoreError, match="chunk size"):
        seal(b"x", kek=KEK, key_id=KID, site_id=SITE, object_id=OID, chunk_size=0)
