"""Shared helpers for the benchmarks: machine facts, process-tree memory, JSON output."""
from __future__ import annotations

import json
import os
import platform
import shutil
import threading
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
SITES_CACHE = REPO / ".fedrad-cache" / "bench-sites"


def built_sites(seed: int, patients: int, sites: int = 4) -> Path:
    """A `sim-cache-dir` with `sites` virtual sites and the held-out hospital for (seed,
    patients), built once (minutes for large sites) and reused by every benchmark."""
    from client.virtual_site import ensure_virtual_site
    from server.heldout import ensure_heldout_export

    cache = SITES_CACHE / f"seed{seed}-patients{patients}"
    for partition in range(sites):
        ensure_virtual_site(cache, partition_id=partition, seed=seed, patients=patients)
    ensure_heldout_export(cache, seed, patients)
    return cache


def fresh_copy(cache: Path, dest: Path) -> Path:
    """`cache` as of now, hard-linked into `dest`: no data copied, and what a run writes
    stays its own (sites write new files or replace files atomically, never in place), so
    each run starts with the sites' ledgers as they were built (empty)."""
    shutil.copytree(cache, dest, copy_function=os.link)
    return dest


def machine() -> dict:
    mem_kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    return {"cpus": os.cpu_count(), "memory_gb": round(mem_kb / 2**20, 1), "python": platform.python_version(),
            **{name: version(name) for name in ("torch", "flwr", "opacus", "pydicom")}}


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2, sort_keys=True) + "\n")
    print(f"wrote {path.relative_to(REPO)}")
    return path


def _rss_kb(pid: int) -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [root], [root]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


class PeakTreeMemory:
    """Samples the summed RSS of this process and all its descendants; `.peak_mb` after exit."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval, self.peak_kb, self._stop = interval, 0, threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, sum(_rss_kb(pid) for pid in _tree(os.getpid())))
            time.sleep(self.interval)

    def __enter__(self) -> "PeakTreeMemory":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return round(self.peak_kb / 1024, 1)


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
