"""`make demo` wall time with dependencies installed, from a cold cache (the synthetic
hospitals are built and ingested in the run) and again warm. Target: cold < 180 s.

    .venv/bin/python benchmarks/demo_time.py
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time

from _common import REPO, write_result


def timed_demo() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "server.demo"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return round(time.perf_counter() - started, 1)


def main() -> None:
    shutil.rmtree(REPO / ".fedrad-cache", ignore_errors=True)
    cold = timed_demo()
    warm = timed_demo()
    print(f"make demo: {cold} s from a cold cache, {warm} s with the hospitals cached (target: cold < 180 s)")
    write_result("demo_time", {"cold_seconds": cold, "warm_seconds": warm, "target_cold_seconds": 180})


if __name__ == "__main__":
    main()
