"""Tensor payload: a tiny binary header, then the raw little-endian array (no pickle).

    offset size      field
     0      4        magic b"FDT1"
     4      1        dtype (1 = float16, 2 = float32)
     5      1        ndim (0..8)
     6      2        reserved (0)
     8      4*ndim   shape (u32 each, little-endian)
     ...             C-order data, little-endian
"""

from __future__ import annotations

import struct

import numpy as np

from client.store.errors import StoreError

MAGIC = b"FDT1"
MAX_NDIM = 8
_HEAD = struct.Struct("<4sBBH")
_CODES = {1: np.dtype("<f2"), 2: np.dtype("<f4")}
_BY_DTYPE = {dt: code for code, dt in _CODES.items()}


def encode_tensor(array: np.ndarray) -> bytes:
    """Header + data of a float16/float32 array."""
    array = np.asarray(array)
    code = _BY_DTYPE.get(array.dtype.newbyteorder("<"))
    if code is None:
        raise StoreError(f"tensor dtype {array.dtype} is not supported; rule: float16 or float32; "
                         "fix: cast it, e.g. array.astype(np.float32)")
    if array.ndim > MAX_NDIM or any(d >= 2**32 for d in array.shape):
        raise StoreError(f"tensor with {array.ndim} dimensions is not supported; rule: at most "
                         f"{MAX_NDIM} dimensions of < 2**32; fix: reshape it")
    data = np.ascontiguousarray(array, dtype=_CODES[code]).tobytes()
    return _HEAD.pack(MAGIC, code, array.ndim, 0) + struct.pack(f"<{array.ndim}I", *array.shape) + data


def decode_tensor(payload: bytes | bytearray, object_id: str) -> np.ndarray:
    """Inverse of :func:`encode_tensor`; StoreError naming ``object_id`` if malformed."""
    bad = StoreError(f"object {object_id} is not a well-formed tensor payload; rule: FDT1 header "
                     "with matching size; fix: re-ingest its source", object_id=object_id)
    if len(payload) < _HEAD.size:
        raise bad
    magic, code, ndim, reserved = _HEAD.unpack_from(payload, 0)
    if magic != MAGIC or code not in _CODES or ndim > MAX_NDIM or reserved:
        raise bad
    offset = _HEAD.size + 4 * ndim
    if len(payload) < offset:
        raise bad
    shape = struct.unpack_from(f"<{ndim}I", payload, _HEAD.size)
    dtype = _CODES[code]
    if len(payload) - offset != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise bad
    array = np.frombuffer(payload, dtype=dtype, offset=offset).reshape(shape)
    if not isinstance(payload, bytearray):
        array = array.copy()
    return array.astype(dtype.newbyteorder("="), copy=False)
