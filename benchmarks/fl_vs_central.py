"""Federated vs centralised training, same data, same epochs, same model initialisation.

Four non-IID virtual sites (synthetic hospitals, ingested into encrypted stores). FL:
`rounds` rounds of non-private FedAvg with `local-epochs` each, via `flwr run`. Centralised: the
sites' training splits pooled, `rounds * local-epochs` epochs, the same model initialisation.
Both are evaluated on the held-out hospital. Target: FL AUC >= 0.97 x centralised AUC.

    .venv/bin/python benchmarks/fl_vs_central.py [--rounds 10] [--local-epochs 2] [--seeds 0 1 2] \
        [--fl-setting batch-size=16 ...]

The federated side trains with local batches of 8 and a learning rate of 0.0005
(`FL_SETTINGS`; `--fl-setting KEY=VALUE` overrides one): at equal epochs, FedAvg's averaged
update moves the model about as far as one site's, and each site's epoch is a fraction of
the pooled one, so with the pooled run's batch of 32 the federation takes ~4x fewer
optimiser steps. Batches of 8 give each site about as many steps per epoch as the pooled
run takes; the lower rate keeps the non-IID sites from drifting apart. The centralised side
keeps the run defaults (batch 32, rate 0.002), on which the task's difficulty was tuned.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from _common import REPO, history, write_result
from client.keys import load_keys
from client.sitedata import load_site_data
from client.store import SiteStore
from client.training import train
from client.virtual_site import ensure_virtual_site
from common.config import RunConfig
from common.model import build_model
from server.heldout import HeldOutSite
from server.local_simulation import LocalSimulation

SITES = 4
FL_SETTINGS = {"batch-size": 8, "learning-rate": 0.0005}


def centralised(config: RunConfig, cache: Path, heldout: HeldOutSite) -> float:
    images, labels = [], []
    for partition in range(SITES):
        site_dir = ensure_virtual_site(cache, partition_id=partition, seed=config.seed, patients=config.sim_patients)
        data = load_site_data(SiteStore.open(site_dir, load_keys(site_dir)), config.image_size)
        images.append(data.train_images)
        labels.append(data.train_labels)
    model = build_model(config.image_size, seed=config.seed)
    settings = config.train_settings(1)
    settings = type(settings)(**{**settings.__dict__, "local_epochs": config.rounds * config.local_epochs})
    torch.set_num_threads(2)
    train(model, torch.cat(images), torch.cat(labels), settings, seed=config.seed)
    return heldout.evaluate({k: v.detach() for k, v in model.state_dict().items()}).auc


def federated(config: RunConfig, cache: Path, work: Path, settings: dict) -> float:
    overrides = {**settings, "sites": SITES, "rounds": config.rounds, "local-epochs": config.local_epochs, "seed": config.seed,
                 "privacy": "none",
                 "run-name": f"fl-{config.seed}", "runs-dir": work / "runs", "sim-cache-dir": cache}
    with LocalSimulation(REPO, work_dir=work / f"sim-{config.seed}") as simulation:
        completed = simulation.run(sites=SITES, run_config=overrides, capture=True)
    if completed.returncode != 0:
        raise SystemExit(completed.stdout[-3000:])
    return history(work / "runs" / f"fl-{config.seed}")[-1]["heldout"]["auc"]


def _literal(text: str):
    """A run-setting value from the command line: a number if it reads as one, else text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fl-setting", action="append", default=[], metavar="KEY=VALUE",
                        help=f"a run setting for the federated side only (defaults: {FL_SETTINGS})")
    args = parser.parse_args()
    settings = {**FL_SETTINGS,
                **{key: _literal(value) for key, value in (item.split("=", 1) for item in args.fl_setting)}}
    cache = REPO / ".fedrad-cache" / "fl-vs-central"  # its own sites: non-private runs make epsilon unbounded
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            config = RunConfig(rounds=args.rounds, local_epochs=args.local_epochs, seed=seed)
            heldout = HeldOutSite(cache, seed=seed, patients=0, image_size=config.image_size)
            central = centralised(config, cache, heldout)
            fl = federated(config, cache, Path(tmp), settings)
            rows.append({"seed": seed, "central_auc": round(central, 4), "federated_auc": round(fl, 4),
                         "ratio": round(fl / central, 4)})
            print(rows[-1], flush=True)
    ratio = statistics.mean(r["federated_auc"] for r in rows) / statistics.mean(r["central_auc"] for r in rows)
    print(f"mean FL AUC / mean centralised AUC = {ratio:.3f} (target >= 0.97)")
    write_result("fl_vs_central", {"rounds": args.rounds, "local_epochs": args.local_epochs, "runs": rows,
                                   "fl_settings": settings,
                                   "ratio_of_means": round(ratio, 4), "target": 0.97})


if __name__ == "__main__":
    main()
