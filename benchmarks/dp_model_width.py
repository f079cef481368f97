"""DP utility by model width, in process: FedAvg over four virtual sites with the sites' own
training functions (`client.training.train`, `client.private_training.train_private`), no
Flower, so that settings can be compared in minutes rather than a `flwr run` each.

Each setting trains from the same initial model for `--rounds` rounds of `--local-epochs`
at every site, averages weighted by examples, and scores the held-out hospital. The DP
runs use patient-level DP-SGD with the noise for `--epsilon` per run (delta 1/(10 x
training patients), as a site derives it) and the clipping norm `--max-grad-norm` (1).
The sites are built once per (seed, patients) under `.fedrad-cache/bench-sites/` (about
6 minutes a site at 1,200 patients) and reused.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/dp_model_width.py [--widths 16 8] \
        [--patients 300] [--batch-size 64] [--rounds 10] [--dp-learning-rate 0.002] [--max-grad-norm 1] \
        [--average-last 1] [--per-round] [--seed 0] [--model-seed S] [--rdp-noise]
"""
from __future__ import annotations

import argparse
import logging
import time
import warnings

import torch
from _common import built_sites, write_result

from client.privacy import noise_for_target_epsilon
from client.private_training import DPConfig, train_private
from client.round_privacy import run_noise
from client.site import resolve_site
from client.sitedata import load_site_data
from client.step_plan import plan_round
from client.training import train as train_plain
from common.config import TrainSettings
from common.evaluation import evaluate
from common.model import build_model
from server.heldout import HeldOutSite

SIZE = 64


def federated_auc(sites, held, args, *, width: int, private: bool) -> tuple[float, float]:
    """Held-out AUC of the last round's global model, and of the average of the last
    `--average-last` rounds' global models (post-processing: no privacy cost)."""
    model_seed = args.seed if args.model_seed is None else args.model_seed
    start = build_model(SIZE, width=width, seed=model_seed).state_dict()
    global_state = start
    history = []
    for server_round in range(1, args.rounds + 1):
        states, weights = [], []
        for index, data in enumerate(sites):
            model = build_model(SIZE, width=width)
            model.load_state_dict(global_state)
            lr = args.dp_learning_rate if private else args.learning_rate
            settings = TrainSettings(image_size=SIZE, local_epochs=args.local_epochs, batch_size=args.batch_size,
                                     learning_rate=lr, seed=args.seed, server_round=server_round, rounds=args.rounds)
            seed = 1000 * server_round + index
            if private:
                plan = plan_round(data.patients, settings)
                delta, steps = 1 / (10 * data.patients), plan.steps * args.rounds
                sigma = (noise_for_target_epsilon(args.epsilon, delta, plan.sample_rate, steps) if args.rdp_noise
                         else run_noise(args.epsilon, delta, plan.sample_rate, steps))
                dp = DPConfig(noise_multiplier=sigma, max_grad_norm=args.max_grad_norm)
                result, _ = train_private(model, data.train_images, data.train_labels, data.train_patients,
                                          settings, dp, seed=seed, secret=b"benchmark")
            else:
                result = train_plain(model, data.train_images, data.train_labels, settings, seed=seed)
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            weights.append(result.examples)
        total = sum(weights)
        global_state = {k: sum(w * s[k] for w, s in zip(weights, states)) / total for k in global_state}
        history.append(global_state)
        if args.per_round:
            print(f"  {'DP' if private else 'no DP'} round {server_round}: held-out AUC "
                  f"{heldout_auc(global_state, held, width):.3f}", flush=True)
    tail = history[-max(1, args.average_last):]
    averaged = {k: sum(s[k] for s in tail) / len(tail) for k in global_state}
    return heldout_auc(global_state, held, width), heldout_auc(averaged, held, width)


def heldout_auc(state: dict, held, width: int) -> float:
    model = build_model(SIZE, width=width)
    model.load_state_dict(state)
    return evaluate(model, held.images, held.labels).auc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 8])
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=0.002)
    parser.add_argument("--dp-learning-rate", type=float, default=0.002)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--rdp-noise", action="store_true",
                        help="derive the noise with RDP alone (sites before stop 14: spends ~7.1 of epsilon 8 by "
                             "the reported bound) instead of as a site does now (the reported bound, to the target)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="per-patient clipping norm C")
    parser.add_argument("--average-last", type=int, default=1,
                        help="also score the average of the last K rounds' global models")
    parser.add_argument("--per-round", action="store_true", help="print the held-out AUC after every round")
    parser.add_argument("--seed", type=int, default=0, help="hospitals, initial weights and training draws")
    parser.add_argument("--model-seed", type=int, default=None,
                        help="initial weights only (default: --seed), to tell the data's part from the start's")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(2)
    rows = []
    cache = built_sites(args.seed, args.patients)
    sites = []
    for partition in range(4):
        site = resolve_site({"partition-id": partition},
                            {"sim-cache-dir": str(cache), "seed": args.seed, "sim-patients": args.patients})
        sites.append(load_site_data(site.store, SIZE))
    held = HeldOutSite(cache, seed=args.seed, patients=args.patients, image_size=SIZE)
    for width in args.widths:
        started = time.perf_counter()
        plain, plain_averaged = federated_auc(sites, held, args, width=width, private=False)
        private, private_averaged = federated_auc(sites, held, args, width=width, private=True)
        params = sum(p.numel() for p in build_model(SIZE, width=width).parameters())
        rows.append({"width": width, "parameters": params, "no_dp_auc": round(plain, 4),
                     "dp_auc": round(private, 4), "ratio": round(private / plain, 4),
                     "average_last": args.average_last, "no_dp_auc_averaged": round(plain_averaged, 4),
                     "dp_auc_averaged": round(private_averaged, 4),
                     "ratio_averaged": round(private_averaged / plain_averaged, 4)})
        print(f"width {width} ({params} parameters): no DP {plain:.3f}, DP eps {args.epsilon:g} {private:.3f}, "
              f"ratio {private / plain:.3f}; averaged over the last {args.average_last} rounds: "
              f"{plain_averaged:.3f} / {private_averaged:.3f} = {private_averaged / plain_averaged:.3f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    write_result("dp_model_width", {"settings": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
