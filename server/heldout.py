"""Server-side evaluation on a held-out synthetic hospital that no site trains on.

Used in simulation only: the coordinator writes the held-out hospital's DICOM once
(cached), reads it through the common pixel pipeline, and evaluates every round's
global model on it.
"""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import torch

from common.evaluation import EvalResult, evaluate
from common.model import build_model
from common.pixels import PixelPipeline, load_dataset
from common.synth import HELD_OUT_SITE_INDEX, write_hospital


FORMAT = "v3"  # bump with the synthetic generator's output, so caches are rebuilt


def ensure_heldout_export(cache_dir: Path, seed: int, patients: int) -> Path:
    """The held-out hospital's DICOM export and labels under `cache_dir`, built on first use."""
    export = cache_dir / f"heldout-{FORMAT}-seed{seed}-p{patients}"
    if (export / "labels.csv").exists():
        return export
    building = export.with_name(f"{export.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    write_hospital(building, site_index=HELD_OUT_SITE_INDEX, seed=seed, patients=patients or None)
    try:
        os.rename(building, export)
    except OSError:
        shutil.rmtree(building, ignore_errors=True)
    return export


class HeldOutSite:
    """The held-out hospital's images as tensors, ready to evaluate global models."""

    def __init__(self, cache_dir: Path, *, seed: int, patients: int, image_size: int, model_width: int = 16) -> None:
        export = ensure_heldout_export(cache_dir, seed, patients)
        with open(export / "labels.csv", newline="", encoding="utf-8") as handle:
            labels = {row["SOPInstanceUID"]: int(row["finding"]) for row in csv.DictReader(handle)}
        pipeline = PixelPipeline(size=image_size)
        images, targets = [], []
        for path in sorted((export / "dicom").rglob("*.dcm")):
            dataset = load_dataset(path)
            images.append(torch.from_numpy(pipeline(dataset))[None])
            targets.append(labels[str(dataset.SOPInstanceUID)])
        self.image_size, self.model_width = image_size, model_width
        self.images = torch.stack(images)
        self.labels = torch.tensor(targets, dtype=torch.int64)

    def evaluate(self, weights: dict[str, torch.Tensor]) -> EvalResult:
        model = build_model(self.image_size, width=self.model_width)
        model.load_state_dict(weights, strict=True)
        return evaluate(model, self.images, self.labels)
