"""The ingest's worker processes: order, real parallelism, bounded memory, a dying worker."""
import os
import time

import pytest

from client.ingest_pool import WINDOW_PER_WORKER, WorkerDied, can_fork, ordered_map

pytestmark = pytest.mark.skipif(not can_fork(), reason="worker processes need fork")


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
