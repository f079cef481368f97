"""Local DP-SGD with the patient as the privacy unit: plain PyTorch and Opacus, no Flower.

Each optimizer step is one Sampled Gaussian Mechanism step over *patients*:

1. Opacus' Poisson sampler (`DPDataLoader`) includes each patient independently with
   probability q. The dataset's items are patients, not images.
2. A sampled patient contributes exactly one of its images, drawn uniformly at random
   (seeded), so a step holds at most one image per patient.
3. Opacus clips each item's gradient to norm C, so that is per-patient clipping, sums,
   and adds N(0, (sigma*C)^2) noise; empty batches still take a (noise-only) step.

Adding or removing one patient (all of their images) therefore changes each step's
clipped sum by at most C, and a round is `steps` compositions of the SGM with
(sigma, q): the history entry `(noise_multiplier, sample_rate, steps)` that the site's
privacy ledger accounts. Opacus' own accountant is not used: the ledger is the source
of truth.

q is the rate Opacus' front door actually samples at, `1 / ceil(patients / batch-size)`
(`DPDataLoader.from_data_loader` uses `1 / len(data_loader)`), and an epoch is
`int(1 / q)` = `ceil(patients / batch-size)` steps; the expected number of patients per
step is `patients * q` <= batch-size (equal when batch-size divides the patient count).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from client.training import TrainResult
from common.config import TrainSettings

# grad_sample_mode -> how it computes per-patient gradient norms (Opacus' names).
GRAD_SAMPLE_MODES = {
    "hooks": "per-layer per-sample gradients from forward/backward hooks",
    "ew": "torch ExpandedWeights",
    "functorch": "torch.func vmap over the whole layer",
    "ghost": "fast gradient clipping: norms first, then a second, re-weighted backward",
}
DEFAULT_GRAD_SAMPLE_MODE = "hooks"  # fastest correct mode for the fedrad CNN (benchmarks/dp_overhead.py)


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD settings of a site: noise multiplier sigma, clipping norm C, Opacus mode."""

    noise_multiplier: float  # sigma >= 0 (0 only for tests; the ClientApp refuses it)
    max_grad_norm: float = 1.0  # C > 0, per patient
    grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.noise_multiplier, (int, float)) and math.isfinite(self.noise_multiplier)
                and self.noise_multiplier >= 0):
            problems.append("noise multiplier must be a finite number >= 0: set noise-multiplier, e.g. 1.0")
        if not (isinstance(self.max_grad_norm, (int, float)) and math.isfinite(self.max_grad_norm)
                and self.max_grad_norm > 0):
            problems.append("max grad norm must be a finite number > 0: set max-grad-norm, e.g. 1.0")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            problems.append(f"unknown grad-sample mode: choose one of {', '.join(GRAD_SAMPLE_MODES)}")
        if problems:
            raise ValueError("invalid DP settings:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class StepPlan:
    """What one round of private training does: `steps` SGM steps at sample rate q."""

    sample_rate: float  # q: probability that a patient is in a step's batch
    steps: int  # optimizer steps of the round (all local epochs)
    patients: int


def _steps_per_epoch(patients: int, batch_size: int) -> int:
    return -(-patients // batch_size)  # len(DataLoader(patients, batch_size)), drop_last=False


def plan_round(patients: int, settings: TrainSettings) -> StepPlan:
    """The sample rate and step count of a round over `patients` patients."""
    if patients < 2:
        raise ValueError(
            f"private training needs at least 2 training patients, the site has {patients}: "
            "ingest more patients (batch-size counts patients per step)"
        )
    if settings.batch_size < 1 or settings.batch_size > patients:
        raise ValueError(
            f"batch-size ({settings.batch_size}) must be between 1 and the number of training patients "
            f"({patients}): batch-size is the expected number of patients per DP-SGD step; lower batch-size "
            "or ingest more patients"
        )
    if settings.local_epochs < 1:
        raise ValueError("local-epochs must be >= 1: set local-epochs to at least 1")
    per_epoch = _steps_per_epoch(patients, settings.batch_size)
    sample_rate = 1 / per_epoch  # exactly what DPDataLoader.from_data_loader samples at
    if int(1 / sample_rate) != per_epoch:  # UniformWithReplacementSampler's step count
        raise AssertionError("Opacus' step count differs from the plan")
    return StepPlan(sample_rate=sample_rate, steps=settings.local_epochs * per_epoch, patients=patients)


class PatientImages(Dataset):
    """Item i is patient i: one of their images, drawn uniformly at random at each access.

    The draw uses this dataset's own generator, so with `num_workers=0` (one process, the
    loader's fixed order of accesses) the sequence of draws is reproducible from the seed.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, members: Sequence[torch.Tensor], *, seed: int):
        self.images, self.targets, self.members = images, targets, list(members)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.members)

    def image_index(self, patient: int) -> int:
        """Index (into `images`) of a uniformly drawn image of `patient`."""
        members = self.members[patient]
        return int(members[torch.randint(len(members), (1,), generator=self.generator)])

    def __getitem__(self, patient: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.image_index(patient)
        return self.images[index], self.targets[index]


def group_by_patient(patients: Sequence[str]) -> list[torch.Tensor]:
    """Image indices of each patient, patients in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(patients):
        groups.setdefault(key, []).append(index)
    return [torch.tensor(indices, dtype=torch.int64) for indices in groups.values()]


def _seeds(seed: int) -> tuple[int, int, int]:
    """Independent seeds for patient sampling, image choice and noise."""
    sampling, choice, noise = np.random.SeedSequence([seed & 0xFFFFFFFF, 0xD95]).generate_state(3, np.uint64)
    return int(sampling), int(choice), int(noise)


def patient_dataset(images: torch.Tensor, labels: torch.Tensor, patients: Sequence[str], *,
                    seed: int) -> PatientImages:
    if not (len(images) == len(labels) == len(patients)):
        raise ValueError("images, labels and patient keys must have one entry per training image")
    return PatientImages(images, labels.float(), group_by_patient(patients), seed=seed)


def train_private(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    patients: Sequence[str],
    settings: TrainSettings,
    dp: DPConfig,
    *,
    seed: int,
    dataset: PatientImages | None = None,
) -> tuple[TrainResult, StepPlan]:
    """Train `model` in place with patient-level DP-SGD (Adam on the privatised gradient).

    Returns the training summary and the plan actually executed: its `(sample_rate,
    steps)` with `dp.noise_multiplier` is the round's accountant history entry.
    `dataset` (a `PatientImages` over the same data) is only for instrumentation.
    """
    if len(images) == 0:
        raise ValueError("the training split is empty: ingest labelled images into the site store")
    if settings.proximal_mu > 0:
        raise ValueError("FedProx (proximal-mu > 0) is not supported with DP-SGD: use strategy fedavg or fedadam")
    started = time.perf_counter()
    sampling_seed, choice_seed, noise_seed = _seeds(seed)
    if dataset is None:
        dataset = patient_dataset(images, labels, patients, seed=choice_seed)
    plan = plan_round(len(dataset), settings)
    ModuleValidator.validate(model, strict=True)

    loader = DataLoader(dataset, batch_size=settings.batch_size, num_workers=0,
                        generator=torch.Generator().manual_seed(sampling_seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    criterion = nn.BCEWithLogitsLoss()
    engine = PrivacyEngine(secure_mode=False)
    private = engine.make_private(
        module=model,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=loader,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=dp.grad_sample_mode,
        noise_generator=torch.Generator().manual_seed(noise_seed),
    )
    if len(private) == 4:  # ghost clipping returns its own criterion
        dp_model, dp_optimizer, criterion, dp_loader = private
    else:
        dp_model, dp_optimizer, dp_loader = private
    if dp_loader.sample_rate != plan.sample_rate or len(dp_loader) * settings.local_epochs != plan.steps:
        raise AssertionError("Opacus' data loader does not sample as planned")

    model.train()
    total_loss, total_seen, steps = 0.0, 0, 0
    try:
        for _ in range(settings.local_epochs):
            for batch_images, batch_targets in dp_loader:
                dp_optimizer.zero_grad(set_to_none=True)
                loss = criterion(dp_model(batch_images), batch_targets)
                loss.backward()
                dp_optimizer.step()
                steps += 1
                if len(batch_targets):
                    total_loss += loss.item() * len(batch_targets)
                    total_seen += len(batch_targets)
    finally:
        dp_optimizer.zero_grad(set_to_none=True)
        dp_model._close()  # removes Opacus' hooks and per-sample attributes from `model`
    if steps != plan.steps:
        raise AssertionError(f"took {steps} DP-SGD steps but planned {plan.steps}")
    result = TrainResult(
        loss=total_loss / max(total_seen, 1),
        examples=total_seen,
        steps=steps,
        seconds=time.perf_counter() - started,
    )
    return result, plan
