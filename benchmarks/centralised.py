"""Centralised reference: the fedrad CNN trained on pooled synthetic sites 0-3, scored
on the held-out hospital (HELD_OUT_SITE_INDEX).

This is the acceptance figure for the synthetic data's difficulty: the held-out ROC
AUC should land in 0.90-0.97 (learnable, not trivial). It also gives the ceiling that
federated and DP runs are compared against. Prints the figures and writes
benchmarks/results/centralised.json.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/centralised.py [--seed 0] [--epochs 20]

The hospitals are written into a fresh temporary folder (pass --cache DIR to keep and
reuse them; a stale cache from an older generator is then your responsibility). The
held-out AUC is also reported at intermediate epochs (the learning curve), so that
federated runs with fewer epochs can be compared at the same budget.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout: `python benchmarks/centralised.py`
    sys.path.insert(0, str(ROOT))

from _common import machine  # noqa: E402  (benchmarks/_common.py: machine facts, as in the other benchmarks)
from common.model import build_model  # noqa: E402
from common.pixels import PixelPipeline, load_dataset  # noqa: E402
from common.synth import HELD_OUT_SITE_INDEX, write_hospital  # noqa: E402

TRAIN_SITES = (0, 1, 2, 3)
RESULTS = Path(__file__).resolve().parent / "results" / "centralised.json"


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank (Mann-Whitney U) formula, ties given average ranks."""
    labels = np.asarray(labels, dtype=bool)
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    positives, negatives = int(labels.sum()), int((~labels).sum())
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def ensure_site(cache: Path, *, site_index: int, seed: int, patients: int | None) -> Path:
    """The site's export folder, written on first use (a complete site has labels.csv)."""
    folder = cache / f"synth-seed{seed}-p{patients or 0}" / f"site-{site_index:05d}"
    if not (folder / "labels.csv").is_file():
        write_hospital(folder, site_index=site_index, seed=seed, patients=patients)
    return folder


def load_site(folder: Path, pipeline: PixelPipeline) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, S, S) float32, labels (N,)) of one site, through the pixel pipeline."""
    with open(folder / "labels.csv", newline="") as handle:
        labels = {row["SOPInstanceUID"]: int(row["finding"]) for row in csv.DictReader(handle)}
    images, targets = [], []
    for path in sorted((folder / "dicom").rglob("*.dcm")):
        ds = load_dataset(path)
        images.append(pipeline(ds))
        targets.append(labels[ds.SOPInstanceUID])
    return np.stack(images), np.asarray(targets, dtype=np.int64)


def train(
    images: torch.Tensor, labels: torch.Tensor, *, image_size: int, epochs: int, lr: float, seed: int,
    on_epoch=None,
) -> torch.nn.Module:
    """Adam on shuffled mini-batches of 32 (seeded); `on_epoch(epoch, model)` after each epoch."""
    model = build_model(image_size, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order), 32):
            batch = order[start : start + 32]
            optimizer.zero_grad(set_to_none=True)
            loss = F.binary_cross_entropy_with_logits(model(images[batch]), labels[batch].float())
            loss.backward()
            optimizer.step()
        if on_epoch is not None:
            on_epoch(epoch, model)
    return model


@torch.no_grad()
def scores(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    model.eval()
    return torch.cat([model(images[i : i + 256]) for i in range(0, len(images), 256)]).numpy()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="data seed (the synthetic hospitals)")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2], help="model/shuffle seeds")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patients", type=int, default=None, help="patients per site (default: each site's own)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=None, help="keep the hospitals here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.cache is None:
        with tempfile.TemporaryDirectory(prefix="fedrad-centralised-") as tmp:
            return run(args, Path(tmp))
    return run(args, args.cache)


def run(args: argparse.Namespace, cache: Path) -> dict:
    pipeline = PixelPipeline(size=args.image_size)
    started = time.perf_counter()
    folders = {i: ensure_site(cache, site_index=i, seed=args.seed, patients=args.patients) for i in (*TRAIN_SITES, HELD_OUT_SITE_INDEX)}
    synth_seconds = time.perf_counter() - started
    started = time.perf_counter()
    data = {i: load_site(folder, pipeline) for i, folder in folders.items()}
    load_seconds = time.perf_counter() - started
    train_x = torch.from_numpy(np.concatenate([data[i][0] for i in TRAIN_SITES]))[:, None]
    train_y = torch.from_numpy(np.concatenate([data[i][1] for i in TRAIN_SITES]))
    test_x = torch.from_numpy(data[HELD_OUT_SITE_INDEX][0])[:, None]
    test_y = data[HELD_OUT_SITE_INDEX][1]
    print(f"{len(train_y)} training images ({int(train_y.sum())} positive) from sites {list(TRAIN_SITES)}; "
          f"{len(test_y)} held-out images ({int(test_y.sum())} positive); synth {synth_seconds:.1f} s, load {load_seconds:.1f} s")

    runs = []
    for seed in args.train_seeds:
        curve: dict[int, float] = {}

        def record(epoch: int, model: torch.nn.Module) -> None:
            if epoch % 5 == 0 or epoch == args.epochs:
                curve[epoch] = round(roc_auc(test_y, scores(model, test_x)), 4)

        started = time.perf_counter()
        model = train(train_x, train_y, image_size=args.image_size, epochs=args.epochs, lr=args.lr, seed=seed, on_epoch=record)
        seconds = time.perf_counter() - started
        runs.append({
            "train_seed": seed,
            "heldout_auc": roc_auc(test_y, scores(model, test_x)),
            "train_auc": roc_auc(train_y.numpy(), scores(model, train_x)),
            "heldout_auc_by_epoch": curve,
            "train_seconds": round(seconds, 2),
        })
        print(f"train seed {seed}: held-out AUC {runs[-1]['heldout_auc']:.4f}  train AUC {runs[-1]['train_auc']:.4f}  "
              f"by epoch {curve}  ({seconds:.1f} s)")
    aucs = [run["heldout_auc"] for run in runs]
    epochs = sorted({e for run in runs for e in run["heldout_auc_by_epoch"]})
    result = {
        "benchmark": "centralised",
        "heldout_auc_mean": float(np.mean(aucs)),
        "heldout_auc_min": float(np.min(aucs)),
        "heldout_auc_max": float(np.max(aucs)),
        "heldout_auc_mean_by_epoch": {e: float(np.mean([r["heldout_auc_by_epoch"][e] for r in runs])) for e in epochs},
        "target_range": [0.90, 0.97],
        "runs": runs,
        "data_seed": args.seed,
        "train_sites": list(TRAIN_SITES),
        "heldout_site": HELD_OUT_SITE_INDEX,
        "train_images": int(len(train_y)),
        "train_positives": int(train_y.sum()),
        "heldout_images": int(len(test_y)),
        "heldout_positives": int(test_y.sum()),
        "image_size": args.image_size,
        "epochs": args.epochs,
        "learning_rate": args.lr,
        "batch_size": 32,
        "synth_seconds": round(synth_seconds, 2),
        "load_seconds": round(load_seconds, 2),
        "threads": args.threads,
        "machine": {**machine(), "platform": platform.platform(), "numpy": np.__version__},
    }
    print(f"held-out AUC mean {result['heldout_auc_mean']:.4f} (min {result['heldout_auc_min']:.4f}, "
          f"max {result['heldout_auc_max']:.4f}), target 0.90-0.97")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
