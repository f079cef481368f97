"""Let glibc's malloc keep freed memory for reuse in a process that trains or ingests.

Each DP-SGD step allocates the batch's per-sample gradients (megabytes a layer) and frees
them at the step's end; by default glibc gives such blocks back to the kernel, and every
step then faults the same amount of fresh, zeroed pages in again. Kept, the next step
reuses them: `benchmarks/dp_overhead.py` shows the effect. Ingest workers (client.ingest_pool)
do the same with each file's buffers (the file, its pixel data, the encrypted chunks):
`tests/unit/client/test_ingest_pool.py`. Peak memory is unchanged (the
process keeps what it already used); only the return of freed memory is deferred.
"""
from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD = 256 << 20  # blocks below this come from the heap, where freed memory is reused
TRIM_THRESHOLD = 512 << 20  # free memory at the heap's top kept up to this size


def keep_freed_memory() -> bool:
    """Set glibc's thresholds (process-wide, idempotent); False where malloc is not glibc's."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
