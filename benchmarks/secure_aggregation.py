"""SecAgg+ cost: round wall time and bytes per site per round, with SecAgg+ / without.

Wall time: the real TLS federation of deploy/local_federation.py (a SuperLink and three
SuperNodes as separate processes, DP-SGD at every site), the same sites and model run
with `aggregation=plain` and `aggregation=secagg+`, alternating, R rounds each; the ratio
of the median training-phase wall time (rounds 2..R; round 1 installs the app).

Bytes: the serialised Flower messages to and from each site in one training round
(instructions + replies, all SecAgg+ stages), counted exactly by running the real
ClientApp in process through Flower's wire format (tests/integration/sites_in_process.py).

    .venv/bin/python benchmarks/secure_aggregation.py [--rounds 3] [--image-size 64] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from _common import REPO, write_result

sys.path.insert(0, str(REPO))
from common.config import RunConfig  # noqa: E402
from deploy.local_federation import LocalFederation  # noqa: E402
from server.federation import run_federation  # noqa: E402
from tests.integration.sites_in_process import SitesInProcess  # noqa: E402


def wall_times(work: Path, rounds: int, image_size: int, repeats: int) -> dict:
    medians: dict[str, list[float]] = {"plain": [], "secagg+": []}
    with LocalFederation(work / "federation", patients=24) as federation:
        federation.prepare(say=lambda *_: None)
        federation.start()
        for repeat in range(repeats):
            for aggregation in ("plain", "secagg+"):
                name = f"{aggregation.rstrip('+')}-{repeat}"
                outcome = federation.run({"sites": 3, "rounds": rounds, "image-size": image_size, "local-epochs": 1,
                                          "batch-size": 8, "heldout-eval": False, "aggregation": aggregation,
                                          "run-name": name, "runs-dir": str(work / "runs"), "round-timeout": 600.0},
                                         capture=True)
                if outcome.returncode != 0:
                    raise SystemExit(outcome.stdout[-3000:])
                lines = [json.loads(x) for x in (work / "runs" / name / "metrics.jsonl").read_text().splitlines()]
                medians[aggregation].append(statistics.median(x["wall_seconds"]["train"] for x in lines[1:]))
    plain, secure = statistics.median(medians["plain"]), statistics.median(medians["secagg+"])
    return {"train_seconds": medians, "median_plain": plain, "median_secagg": secure, "ratio": secure / plain}


def bytes_per_round(work: Path, image_size: int) -> dict:
    result = {}
    for aggregation in ("plain", "secagg+"):
        config = RunConfig(sites=3, rounds=1, image_size=image_size, local_epochs=1, batch_size=4, sim_patients=16,
                           heldout_eval=False, aggregation=aggregation, run_name=aggregation.rstrip("+"),
                           runs_dir=str(work / "bytes"), sim_cache_dir=str(work / "bytes-sites"))
        grid = SitesInProcess(3, config.to_dict())
        grid.count_phase = "train"
        run_federation(config, grid, say=lambda _: None)
        result[aggregation] = {"to_site": statistics.mean(grid.bytes_to.values()),
                               "from_site": statistics.mean(grid.bytes_from.values())}
    for direction in ("to_site", "from_site"):
        result[f"ratio_{direction}"] = result["secagg+"][direction] / result["plain"][direction]
    total = {a: result[a]["to_site"] + result[a]["from_site"] for a in ("plain", "secagg+")}
    result["ratio_total"] = total["secagg+"] / total["plain"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedrad-secagg-") as tmp:
        work = Path(tmp)
        payload = {"bytes_per_site_per_round": bytes_per_round(work, args.image_size),
                   "wall": wall_times(work, args.rounds, args.image_size, args.repeats),
                   "settings": vars(args)}
    path = write_result("secure_aggregation", payload)
    print(json.dumps(payload, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
