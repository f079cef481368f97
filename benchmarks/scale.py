"""Scale: N virtual sites x 2 rounds at a small image size, with the peak memory of the
whole process tree (SuperLink, simulation, Ray actors). At most 4 sites train at once,
so peak memory must not grow with N.

    .venv/bin/python benchmarks/scale.py [--sites 10 50 100]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import REPO, PeakTreeMemory, history, write_result
from server.local_simulation import LocalSimulation


def measure(sites: int, work: Path) -> dict:
    config = {"sites": sites, "rounds": 2, "min-sites": sites, "run-name": f"scale-{sites}",
              "runs-dir": work / "runs", "sim-cache-dir": work / "cache", "image-size": 16,
              "sim-patients": 8, "batch-size": 2, "local-epochs": 1, "heldout-eval": False,
              "wait-for-sites": 600.0}
    started = time.perf_counter()
    with PeakTreeMemory() as memory, LocalSimulation(REPO, work_dir=work / f"sim-{sites}") as simulation:
        completed = simulation.run(sites=sites, run_config=config, concurrency=4, capture=True)
    if completed.returncode != 0:
        raise SystemExit(completed.stdout[-3000:])
    lines = history(work / "runs" / f"scale-{sites}")
    return {"sites": sites, "rounds_completed": len(lines),
            "sites_in_last_round": len(lines[-1]["sites"]), "failures": sum(len(l["failures"]) for l in lines),
            "peak_memory_mb": memory.peak_mb, "wall_seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sites", type=int, nargs="+", default=[10, 50, 100])
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for sites in args.sites:
            results.append(measure(sites, Path(tmp)))
            print(results[-1])
    write_result("scale", {"results": results})


if __name__ == "__main__":
    main()
