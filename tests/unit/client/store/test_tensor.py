"""Tensor payload codec: dtype and shape survive, nothing but float16/float32, malformed input refused."""

from __future__ import annotations

import numpy as np
import pytest

from client.store import StoreError
from client.store.tensor import decode_tensor, encode_tensor


@pytest.mark.parametrize("dtype", [np.float16, np.float32, ">f4"])
@pytest.mark.parametrize("shape", [(), (0,), (3,), (1, 4, 5), (2, 1, 3, 2)])
def test_round_trip(dtype, shape):
    arr = (np.arange(int(np.prod(shape))).reshape(shape) * 0.5).astype(dtype)
    out = decode_tensor(encode_tensor(arr), "x")
    assert out.shape == arr.shape and out.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(out, arr)
    out2 = decode_tensor(bytearray(encode_tensor(arr)), "x")
    assert out2.flags.writeable


def test_non_contiguous_input():
    arr = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    np.testing.assert_array_equal(decode_tensor(encode_tensor(arr), "x"), arr)


@pytest.mark.parametrize("dtype", [np.int64, np.float64, np.uint8, object])
def test_other_dtypes_refused(dtype):
    with pytest.raises(StoreError, match="float16 or float32"):
        encode_tensor(np.zeros(3, dtype=dtype))


def test_malformed_payloads_refused():
    good = encode_tensor(np.ones((2, 2), dtype=np.float32))
    for bad in (b"", good[:4], b"XXXX" + good[4:], good[:-1], good + b"\0", good[:4] + b"\x07" + good[5:]):
        with pytest.raises(StoreError, match="object oid-1"):
            decode_tensor(bad, "oid-1")
