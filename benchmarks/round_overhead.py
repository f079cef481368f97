"""Round overhead: round wall time / slowest site's local training time (4 and 20 sites).

All sites train at once, each with one torch thread (as separate hospitals would), via
Flower's simulation runtime and `flwr run`. Round 1 also builds the virtual sites and is
left out. Two ratios per round, median over rounds 2..R:
- `train_ratio`: training phase wall time (messages out -> every update in -> aggregated)
  / slowest site's local training time;
- `round_ratio`: whole round (training, site evaluation, checkpoint, metrics) /
  (slowest site's training + slowest site's evaluation time). Held-out evaluation is off.

Flower 1.41's simulation engine runs at most min(32, CPUs + 4) sites at once (its worker
thread pool), 6 on a 2-core machine: with more sites the round runs in waves, and the
ratio measures that, not per-message overhead. `waves` in the output says how many.

    .venv/bin/python benchmarks/round_overhead.py [--sites 4 20] [--rounds 4] [--local-epochs 2] [--privacy none dp] \
        [--patients 0] [--aggregation plain secagg+]

`--patients N` gives every virtual site N patients (0: each synthetic hospital's own
60-120, which train for about a second): the per-round latency is fixed, so the ratio
depends on how long a site trains.

With `--aggregation secagg+` (the default run setting) a training round is SecAgg+'s four
message exchanges instead of one; `plain` measures the round loop alone.
With `--privacy dp` (the default run setting) the site's per-round privacy bookkeeping
(policy check, write-ahead charge, RDP and PRV accounting) counts as overhead too.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from _common import REPO, history, write_result
from server.local_simulation import LocalSimulation


def measure(sites: int, rounds: int, local_epochs: int, privacy: str, patients: int, aggregation: str,
            work: Path) -> dict:
    name = f"overhead-{sites}-{privacy}-{aggregation.rstrip('+')}"
    config = {"sites": sites, "rounds": rounds, "min-sites": sites, "run-name": name,
              "sim-patients": patients, "aggregation": aggregation,
              "runs-dir": work / "runs", "sim-cache-dir": REPO / ".fedrad-cache" / f"overhead-{privacy}",
              "heldout-eval": False, "local-epochs": local_epochs, "image-size": 64, "privacy": privacy}
    with LocalSimulation(REPO, work_dir=work / f"sim-{sites}") as simulation:
        completed = simulation.run(sites=sites, run_config=config, concurrency=sites, capture=True)
    if completed.returncode != 0:
        raise SystemExit(completed.stdout[-3000:])
    train_ratios, round_ratios, slowest = [], [], []
    for line in history(work / "runs" / name)[1:]:
        train = max(s["train"]["train-seconds"] for s in line["sites"].values())
        evaluate = max(s["evaluate"]["eval-seconds"] for s in line["sites"].values())
        train_ratios.append(line["wall_seconds"]["train"] / train)
        round_ratios.append(line["wall_seconds"]["round"] / (train + evaluate))
        slowest.append(train)
    waves = -(-sites // min(32, (os.cpu_count() or 1) + 4))
    return {"sites": sites, "privacy": privacy, "aggregation": aggregation, "patients_per_site": patients or "own",
            "rounds": rounds,
            "local_epochs": local_epochs, "waves": waves,
            "train_ratio": round(statistics.median(train_ratios), 3),
            "round_ratio": round(statistics.median(round_ratios), 3),
            "slowest_site_train_seconds": round(statistics.median(slowest), 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sites", type=int, nargs="+", default=[4, 20])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--privacy", nargs="+", default=["none", "dp"],
                        help="'none': framework overhead only; 'dp': also the site's per-round privacy accounting")
    parser.add_argument("--patients", type=int, default=0, help="patients per virtual site (0: each hospital's own)")
    parser.add_argument("--aggregation", nargs="+", default=["plain", "secagg+"],
                        help="'plain': the round loop alone; 'secagg+' (the run default): also SecAgg+'s three "
                             "extra message exchanges and its masking")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for privacy in args.privacy:
            for aggregation in args.aggregation:
                for sites in args.sites:
                    result = measure(sites, args.rounds, args.local_epochs, privacy, args.patients, aggregation,
                                     Path(tmp))
                    print(result, flush=True)
                    results.append(result)
    write_result("round_overhead", {"targets": {"4": 1.10, "20": 1.25}, "results": results})


if __name__ == "__main__":
    main()
