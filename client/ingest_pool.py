"""Run ingest's per-file work in worker processes, results in input order.

Workers are forked from the ingest (Linux and macOS: ``fork``; elsewhere one process),
so they share the de-identifier, pixel pipeline, labels and the open store without
pickling them and start in milliseconds. A fork copies the parent's memory, keys
included: the workers seal (encrypt and write) each image's objects, and the parent, the
store's single writer, names them in the manifest. At most ``WINDOW_PER_WORKER`` files per
worker are in flight, so memory does not grow with the number of files, and each worker
reuses the memory it freed (``client.allocator``; when that came in, the workers' page faults
over the pydicom corpus fell from ~40 k to ~17 k). On Linux each worker dies with its parent
(``PR_SET_PDEATHSIG``), so a killed ingest leaves no worker behind.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator, TypeVar

from client.allocator import keep_freed_memory

T = TypeVar("T")
R = TypeVar("R")

WINDOW_PER_WORKER = 8
_PR_SET_PDEATHSIG = 1
_work: Callable | None = None  # the function each worker runs, inherited by fork
_parent: int | None = None


class WorkerDied(RuntimeError):
    """A worker process exited mid-file (a decoder crash, or it was killed)."""


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def ordered_map(work: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map(work, items)``, in ``workers`` forked processes when ``workers > 1`` (in this
    process otherwise, or where fork is unavailable). Raises WorkerDied if a worker dies."""
    if workers <= 1 or not can_fork():
        yield from map(work, items)
        return
    global _work, _parent
    _work, _parent = work, os.getpid()
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker)
    done = False
    try:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(_run, item))
            if len(pending) >= workers * WINDOW_PER_WORKER:
                yield pending.popleft().result()
        while pending:
            result = pending.popleft().result()
            if not pending:  # every item is done: the idle workers exit in the background
                pool.shutdown(wait=False)
                done = True
            yield result
    except BrokenProcessPool:
        raise WorkerDied("an ingest worker process died (a crash while decoding a file, or it "
                         "was killed); what was ingested before is kept; fix: run the ingest "
                         "again to resume, with --workers 1 to read every file in one process") from None
    finally:
        if not done:  # an error or an early close: wait until no worker is still writing
            pool.shutdown(wait=True)
        _work = None


def _run(item):
    return _work(item)


def _init_worker() -> None:
    """Die with the parent (Linux); one torch thread per worker (the workers are the parallelism)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
        if os.getppid() != _parent:  # the parent died before the prctl took effect
            os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which stops us
    keep_freed_memory()  # a file's buffers reuse the last file's pages
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
