"""The ingest's worker processes: order, real parallelism, bounded memory, a dying worker."""
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client.ingest_pool import WINDOW_PER_WORKER, WorkerDied, can_fork, ordered_map

pytestmark = pytest.mark.skipif(not can_fork(), reason="worker processes need fork")
REPO = Path(__file__).resolve().parents[3]


def _pid_and_square(n: int) -> tuple[int, int]:
    time.sleep(0.005)  # long enough that both workers get items
    return os.getpid(), n * n


def test_results_come_in_input_order_from_other_processes():
    results = list(ordered_map(_pid_and_square, range(50), workers=2))
    assert [square for _, square in results] == [n * n for n in range(50)]
    pids = {pid for pid, _ in results}
    assert os.getpid() not in pids and len(pids) == 2


def test_one_worker_runs_in_this_process():
    assert {pid for pid, _ in ordered_map(_pid_and_square, range(5), workers=1)} == {os.getpid()}


def test_at_most_a_window_of_items_is_in_flight():
    taken = []

    def items():
        for n in range(100):
            taken.append(n)
            yield n

    results = ordered_map(_pid_and_square, items(), workers=2)
    next(results)
    assert len(taken) <= 2 * WINDOW_PER_WORKER + 1  # the input is not read ahead without bound
    assert [square for _, square in results] == [n * n for n in range(1, 100)]


def _dies_at_seven(n: int) -> int:
    if n == 7:
        os._exit(3)  # a decoder crash, as the parent sees it
    return n


def test_a_dying_worker_is_one_clear_error_after_the_results_before_it():
    done = []
    with pytest.raises(WorkerDied, match="--workers 1"):
        for n in ordered_map(_dies_at_seven, range(40), workers=2):
            done.append(n)
    assert done == list(range(len(done))) and len(done) <= 7


def test_workers_exit_after_the_last_result_and_an_early_close_waits_for_them():
    assert [square for _, square in ordered_map(_pid_and_square, range(20), workers=2)][-1] == 19 * 19
    deadline = time.monotonic() + 10  # the idle workers exit in the background
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert multiprocessing.active_children() == []

    results = ordered_map(_pid_and_square, range(100), workers=2)
    next(results)
    results.close()  # what ingest does on an error: no worker may still be writing after it
    assert multiprocessing.active_children() == []


_PAGE_FAULTS = r"""
import json, resource, sys
from client.ingest_pool import ordered_map

def faults_of_second_pass(_):
    counts = []
    for _ in range(2):  # a file's buffers vary in size; the second pass meets sizes seen before
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for megabytes in (3, 8, 1, 5, 2):
            buffer = bytearray(megabytes << 20)  # zeroed: every page touched
            del buffer
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return counts[1]

workers = list(ordered_map(faults_of_second_pass, [0, 1], workers=2))  # forked from a fresh interpreter
here = faults_of_second_pass(None)  # the same interpreter, glibc's defaults
print(json.dumps({"here": here, "workers": workers}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_a_worker_reuses_freed_memory_without_page_faults():
    done = subprocess.run([sys.executable, "-c", _PAGE_FAULTS], cwd=REPO, capture_output=True, text=True,
                          timeout=60, check=True)
    faults = json.loads(done.stdout)
    pages_of_8_mb = (8 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert faults["here"] > pages_of_8_mb // 4  # the default maps or grows afresh
    assert max(faults["workers"]) < pages_of_8_mb // 16, faults  # a worker reuses what it freed
