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
privacy ledger accounts. The ledger is the source of truth; Opacus' accountant (one per
round) only cross-checks that its recorded history equals the plan.

q is the rate Opacus' front door actually samples at, `1 / ceil(patients / batch-size)`
(`DPDataLoader.from_data_loader` uses `1 / len(data_loader)`), and an epoch is Opacus'
`int(1 / q)` steps; the expected number of patients per step is `patients * q` <=
batch-size (equal when batch-size divides the patient count).
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import math
import time
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

_ROOT_HANDLERS = list(logging.getLogger().handlers)
from opacus import PrivacyEngine  # noqa: E402
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping  # noqa: E402
from opacus.validators import ModuleValidator  # noqa: E402

# Opacus calls logging.basicConfig() on import, which adds a root handler and prints every
# Flower log line twice; the site's logging configuration is not Opacus' to change.
logging.getLogger().handlers[:] = _ROOT_HANDLERS

from client.grad_samplers import per_sample_convolutions  # noqa: E402  (also registers fedrad's Conv2d sampler)
from client.allocator import keep_freed_memory  # noqa: E402
from client.inline_grad_samples import InlineDPOptimizer, inline_grad_samples  # noqa: E402
from client.step_plan import StepPlan, plan_round
from client.training import TrainResult
from common.config import TrainSettings

# grad_sample_mode -> how it computes per-patient gradient norms (Opacus' names).
GRAD_SAMPLE_MODES = {
    "hooks": "per-layer per-sample gradients from forward/backward hooks",
    "ew": "torch ExpandedWeights",
    "functorch": "torch.func vmap over the whole layer",
    "ghost": "fast gradient clipping: norms first, then a second, re-weighted backward",
    "inline": "fedrad's layers compute them in their own backward (client.inline_grad_samples), no hooks",
}
# Opacus' hooks on the first layer (whose input needs no gradient) make torch warn on
# every backward pass; the per-sample gradients are right (tests compare all modes).
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with "
                        "respect to module outputs", category=UserWarning)
# Fastest correct mode for the fedrad CNN (benchmarks/dp_overhead.py: "inline" ahead of "hooks"
# with fedrad's Conv2d sampler, which is on par with "ew" and ahead of "functorch", "ghost" and
# physical batches). Models with other trainable layers need "hooks".
DEFAULT_GRAD_SAMPLE_MODE = "inline"


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


def _seeds(seed: int, secret: bytes) -> tuple[int, int, int]:
    """Seeds for patient sampling, image choice and noise: HMAC-SHA256(secret, seed).

    Whoever knows these seeds can replay the sample and subtract the noise, which voids
    the guarantee; with the site's secret as key, only the site can.
    """
    digest = hmac.new(secret, b"fedrad-dp-sgd:" + str(int(seed)).encode(), hashlib.sha256).digest()
    return tuple(int.from_bytes(digest[i : i + 8], "big") for i in (0, 8, 16))  # type: ignore[return-value]


def patient_dataset(images: torch.Tensor, labels: torch.Tensor, patients: Sequence[str], *, seed: int,
                    dataset_class: type[PatientImages] = PatientImages) -> PatientImages:
    """The patients of a training split as a dataset (item i: one image of patient i)."""
    if not (len(images) == len(labels) == len(patients)):
        raise ValueError("images, labels and patient keys must have one entry per training image")
    return dataset_class(images, labels.float(), group_by_patient(patients), seed=seed)


def _empty_gradients(optimizer: DPOptimizer) -> None:
    """Gradients of an empty batch, in the form the Opacus optimizer reads.

    Not every grad-sample mode can run the model on zero images ("ew" and "functorch"
    fail), and the step must still happen: skipping it would reveal that nobody was
    sampled, and the plan counts it. Zero per-patient gradients plus Opacus' noise is
    exactly the Sampled Gaussian Mechanism's output for an empty sample. The ghost
    clipping optimizer reads the (already clipped) sum from `p.grad`; the others read
    the per-sample gradients `p.grad_sample`.
    """
    for p in optimizer.params:
        p.grad = torch.zeros_like(p)
        if not isinstance(optimizer, DPOptimizerFastGradientClipping):
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)


def _add_proximal_term(optimizer: torch.optim.Optimizer, mu: float) -> None:
    """FedProx: add mu * (w - w_global) to the privatised gradient before each update.

    The term does not depend on any patient, so adding it after clipping and noise is
    post-processing and leaves the guarantee unchanged. (Opacus' DPOptimizer sets
    `p.grad` to the noisy average, then calls this optimizer's `step`, which runs the
    pre-hook first.)
    """
    anchors = {p: p.detach().clone() for group in optimizer.param_groups for p in group["params"]}

    def hook(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        with torch.no_grad():
            for p, anchor in anchors.items():
                if p.grad is not None:
                    p.grad.add_(p.detach() - anchor, alpha=mu)

    optimizer.register_step_pre_hook(hook)


def train_private(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    patients: Sequence[str],
    settings: TrainSettings,
    dp: DPConfig,
    *,
    seed: int,
    secret: bytes = b"",
    dataset_class: type[PatientImages] = PatientImages,
) -> tuple[TrainResult, StepPlan]:
    """Train `model` in place with patient-level DP-SGD (Adam on the privatised gradient).

    `patients` holds the opaque patient key of each image. Returns the training summary
    and the plan actually executed: `(dp.noise_multiplier, plan.sample_rate, plan.steps)`
    is the round's accountant history entry. The same `seed` and `secret` give the same
    weights. `secret` keys the derivation of the sampling, image-choice and noise seeds:
    a site passes a secret the coordinator does not hold (its site secret), otherwise
    anyone who knows `seed` can reproduce the noise and remove it. The empty default is
    for tests and benchmarks.
    With `settings.proximal_mu > 0` the FedProx term is added after privatisation.
    `dataset_class` lets tests observe the items each step draws.
    """
    if len(images) == 0:
        raise ValueError("the training split is empty: ingest labelled images into the site store")
    keep_freed_memory()  # each step's per-sample gradients reuse the last step's pages
    started = time.perf_counter()
    sampling_seed, choice_seed, noise_seed = _seeds(seed, secret)
    dataset = patient_dataset(images, labels, patients, seed=choice_seed, dataset_class=dataset_class)
    plan = plan_round(len(dataset), settings)
    ModuleValidator.validate(model, strict=True)

    loader = DataLoader(dataset, batch_size=settings.batch_size, num_workers=0,
                        generator=torch.Generator().manual_seed(sampling_seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    if settings.proximal_mu > 0:
        _add_proximal_term(optimizer, settings.proximal_mu)
    # inline mode backpropagates the summed loss (each layer's per-sample gradients are then
    # each patient's own); Opacus' DPOptimizer still divides by the expected batch size
    criterion = nn.BCEWithLogitsLoss(reduction="sum" if dp.grad_sample_mode == "inline" else "mean")
    with _per_sample_layers(model, dp.grad_sample_mode):
        loss, steps = _run_private(model, optimizer, criterion, loader, plan, settings, dp, noise_seed)
    result = TrainResult(loss=loss, examples=len(images), steps=steps, seconds=time.perf_counter() - started)
    return result, plan


def _per_sample_layers(model: nn.Module, grad_sample_mode: str):
    """The layer swap a mode trains with: hooks mode's convolutions skip the summed weight
    gradients DP-SGD discards; inline mode's layers compute per-sample gradients themselves."""
    if grad_sample_mode == "hooks":
        return per_sample_convolutions(model)
    if grad_sample_mode == "inline":
        return inline_grad_samples(model)
    return contextlib.nullcontext()


def _run_private(model, optimizer, criterion, loader, plan, settings, dp, noise_seed) -> tuple[float, int]:
    """make_private, the planned DP-SGD steps, Opacus' cleanup; checks the history is the
    plan. Returns the mean training loss and the number of steps."""
    # secure_mode=False: seeded torch generators, so a round is reproducible from its seed
    # and secret (Opacus' secure mode draws from a CSPRNG and hardens the noise against
    # floating-point attacks, but cannot be seeded).
    engine = PrivacyEngine(accountant="rdp", secure_mode=False)
    private = engine.make_private(
        module=model,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=loader,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode="no_op" if dp.grad_sample_mode == "inline" else dp.grad_sample_mode,
        noise_generator=torch.Generator().manual_seed(noise_seed),
    )
    if len(private) == 4:  # ghost clipping returns its own criterion
        dp_model, dp_optimizer, criterion, dp_loader = private
    else:
        dp_model, dp_optimizer, dp_loader = private
    if dp.grad_sample_mode == "inline":  # also clips the deep convolutions' ghost per-sample gradients
        dp_optimizer = InlineDPOptimizer.as_inline(dp_optimizer)
    if dp_loader.sample_rate != plan.sample_rate or len(dp_loader) * settings.local_epochs != plan.steps:
        raise AssertionError("Opacus' data loader does not sample as planned")

    model.train()
    total_loss, total_seen, steps = 0.0, 0, 0
    try:
        for _ in range(settings.local_epochs):
            for batch_images, batch_targets in dp_loader:
                dp_optimizer.zero_grad(set_to_none=True)
                if len(batch_targets) == 0:  # Poisson sampled nobody: the step is noise only
                    _empty_gradients(dp_optimizer)
                else:
                    loss = criterion(dp_model(batch_images), batch_targets)
                    loss.backward()
                    total_loss += loss.item() * (1 if dp.grad_sample_mode == "inline" else len(batch_targets))
                    total_seen += len(batch_targets)
                dp_optimizer.step()
                steps += 1
    finally:
        dp_optimizer.zero_grad(set_to_none=True)
        dp_model._close()  # removes Opacus' hooks and per-sample attributes from `model`
        for p in model.parameters():
            if hasattr(p, "summed_grad"):  # the one attribute Opacus' cleanup leaves behind
                del p.summed_grad
    # Opacus' accountant hook runs once per noisy optimizer step: its history must be the plan.
    if steps != plan.steps or engine.accountant.history != [(dp.noise_multiplier, plan.sample_rate, plan.steps)]:
        raise AssertionError(f"took {steps} DP-SGD steps but planned {plan.steps}")
    return total_loss / max(total_seen, 1), steps
