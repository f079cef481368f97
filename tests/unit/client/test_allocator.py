"""Training processes keep freed memory: a step's large buffers reuse the last step's pages."""
import os
import subprocess
import sys

import pytest

_CHILD = r"""
import resource, sys
from client.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()

def step():  # a DP-SGD step's per-sample gradients: buffers of a few megabytes, then freed
    buffers = [bytearray(megabytes << 20) for megabytes in (5, 3, 2, 1, 1)]
    del buffers

step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    pages = 5 * (12 << 20) // os.sysconf("SC_PAGE_SIZE")  # what five steps' buffers span
    assert _page_faults("keep") < pages // 20
    assert _page_faults("default") > pages // 4  # glibc as it comes: fresh pages every step
