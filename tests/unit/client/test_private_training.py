"""Patient-level DP-SGD with real Opacus: sampling plan, one image per patient, clipping,
noise, reproducibility, clean weights, and learning under noise."""
from __future__ import annotations

import pytest
import torch
from opacus.data_loader import DPDataLoader
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from client.private_training import (
    GRAD_SAMPLE_MODES,
    DPConfig,
    PatientImages,
    train_private,
)
from client.step_plan import StepPlan, plan_round
from common.config import TrainSettings
from common.model import build_model

SIZE = 16


def settings(**overrides) -> TrainSettings:
    values = dict(local_epochs=1, batch_size=4, learning_rate=0.01, image_size=SIZE)
    return TrainSettings(**{**values, **overrides})


def site(patients: int, per_patient: int, *, size: int = SIZE, seed: int = 0, contrast: float = 0.0):
    """Images of `patients` patients (`per_patient` each, interleaved); odd patients
    are positive and, with `contrast`, show a bright square somewhere."""
    generator = torch.Generator().manual_seed(seed)
    images, labels, keys = [], [], []
    for round_ in range(per_patient):
        for patient in range(patients):
            image = torch.rand(1, size, size, generator=generator) * 0.3
            if patient % 2 and contrast:
                row, col = torch.randint(0, size - 6, (2,), generator=generator).tolist()
                image[0, row : row + 6, col : col + 6] += contrast
            images.append(image)
            labels.append(patient % 2)
            keys.append(f"patient-{patient:03d}")
    return torch.stack(images), torch.tensor(labels), tuple(keys)


def weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([v.detach().flatten() for v in model.state_dict().values()])


# -- plan ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patients", "batch_size", "epochs", "rate", "steps"),
    [(100, 32, 2, 1 / 4, 8), (64, 32, 3, 1 / 2, 6), (5, 5, 1, 1.0, 1), (93, 1, 1, 1 / 93, 92)],
)
def test_plan_round_matches_what_opacus_samples(patients, batch_size, epochs, rate, steps):
    plan = plan_round(patients, settings(batch_size=batch_size, local_epochs=epochs))
    assert plan == StepPlan(sample_rate=rate, steps=steps, patients=patients)
    loader = DPDataLoader.from_data_loader(DataLoader(TensorDataset(torch.arange(patients)), batch_size=batch_size))
    assert loader.sample_rate == plan.sample_rate
    assert len(loader) * epochs == plan.steps  # 93 -> 92: Opacus' int(1 / q) in floating point


@pytest.mark.parametrize(("patients", "batch_size"), [(10, 11), (1, 1), (0, 1)])
def test_plan_round_refuses_batches_larger_than_the_site(patients, batch_size):
    with pytest.raises(ValueError, match="batch-size|patients"):
        plan_round(patients, settings(batch_size=batch_size))
    with pytest.raises(ValueError, match="batch-size"):
        plan_round(10, settings(batch_size=11))


def test_dp_config_names_every_problem():
    with pytest.raises(ValueError) as error:
        DPConfig(noise_multiplier=-1.0, max_grad_norm=0.0, grad_sample_mode="fast")
    message = str(error.value)
    assert "noise multiplier" in message and "max grad norm" in message and "grad-sample mode" in message
    assert DPConfig(noise_multiplier=1.0).grad_sample_mode in GRAD_SAMPLE_MODES


# -- one image per patient per step ----------------------------------------------------


class RecordingPatients(PatientImages):
    """Records, for each batch the loader fetches, (patient, image index) pairs."""

    batches: list[list[tuple[int, int]]] = []

    def __getitems__(self, patients: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        chosen = [(patient, self.image_index(patient)) for patient in patients]
        RecordingPatients.batches.append(chosen)
        return [(self.images[index], self.targets[index]) for _, index in chosen]


def test_a_step_uses_at_most_one_image_per_patient():
    images, labels, keys = site(patients=12, per_patient=3)
    RecordingPatients.batches = []
    _, plan = train_private(build_model(SIZE, width=4), images, labels, keys, settings(batch_size=6, local_epochs=4),
                            DPConfig(noise_multiplier=1.0), seed=5, dataset_class=RecordingPatients)
    assert len(RecordingPatients.batches) == plan.steps
    used: dict[int, set[int]] = {}
    for batch in RecordingPatients.batches:
        patients = [patient for patient, _ in batch]
        assert len(patients) == len(set(patients)), "a patient appeared twice in one step"
        for patient, index in batch:
            assert keys[index] == f"patient-{patient:03d}"  # the image is that patient's
            used.setdefault(patient, set()).add(index)
    # the image is drawn at random each time, not always the patient's first one
    assert sum(len(indices) > 1 for indices in used.values()) >= 6


# -- training contract ---------------------------------------------------------------


def test_trains_in_place_with_planned_steps_and_plain_weight_names():
    images, labels, keys = site(patients=10, per_patient=2)
    model = build_model(SIZE, width=4)
    before = weights(model)
    result, plan = train_private(model, images, labels, keys, settings(batch_size=4, local_epochs=2),
                                 DPConfig(noise_multiplier=1.0), seed=1)
    assert result.steps == plan.steps == 2 * 3 and plan.patients == 10
    assert plan.sample_rate == pytest.approx(1 / 3)
    assert not torch.equal(weights(model), before)
    assert torch.isfinite(weights(model)).all()
    assert list(model.state_dict()) == list(build_model(SIZE, width=4).state_dict())
    assert {type(m) for m in model.modules()} == {type(m) for m in build_model(SIZE, width=4).modules()}  # restored
    # Opacus left nothing behind: no hooks, no per-sample attributes
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert not any(hasattr(p, a) for p in model.parameters() for a in ("grad_sample", "ghost_grad_sample", "summed_grad"))


def test_refuses_models_opacus_cannot_privatise():
    images, labels, keys = site(patients=4, per_patient=1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(1))
    with pytest.raises(Exception, match="BatchNorm"):
        train_private(model, images, labels, keys, settings(batch_size=2), DPConfig(noise_multiplier=1.0), seed=0)


@pytest.mark.parametrize("mode", sorted(GRAD_SAMPLE_MODES))
def test_every_mode_survives_empty_batches_and_agrees_with_hooks(mode):
    """batch-size 1 of 6 patients: a third of the steps sample nobody (noise-only steps)."""
    images, labels, keys = site(patients=6, per_patient=2)
    plan_settings = settings(batch_size=1, local_epochs=2)
    reference, model = build_model(SIZE, width=4), build_model(SIZE, width=4)
    train_private(reference, images, labels, keys, plan_settings, DPConfig(noise_multiplier=0.5), seed=2)
    result, plan = train_private(model, images, labels, keys, plan_settings,
                                 DPConfig(noise_multiplier=0.5, grad_sample_mode=mode), seed=2)
    assert result.steps == plan.steps == 12
    torch.testing.assert_close(weights(model), weights(reference), atol=1e-3, rtol=0)


def test_each_patient_gradient_is_clipped_before_summing():
    """One step over every patient (q = 1), sigma = 0: Adam's first update is
    -lr * g / (|g| + eps), so its signs are those of g = mean of the per-patient clipped
    gradients (every patient's norm here is 7..45, far above C = 1), and differ from those
    of the unclipped mean, or of the mean clipped as a whole, in hundreds of places."""
    images, labels, keys = site(patients=8, per_patient=1, seed=3)
    model = build_model(SIZE, width=4)
    before = [p.detach().clone() for p in model.parameters()]
    per_patient = []
    for image, label in zip(images, labels.float()):
        model.zero_grad()
        F.binary_cross_entropy_with_logits(model(image[None]), label[None]).backward()
        per_patient.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    grads = torch.stack(per_patient)
    assert grads.norm(dim=1).min() > 2.0
    clipped = (grads / grads.norm(dim=1, keepdim=True)).mean(0)
    unclipped = grads.mean(0)

    _, plan = train_private(model, images, labels, keys, settings(batch_size=8, learning_rate=1e-3),
                            DPConfig(noise_multiplier=0.0, max_grad_norm=1.0), seed=0)
    assert plan.steps == 1 and plan.sample_rate == 1.0
    update = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    clear = clipped.abs() > 1e-3 * clipped.abs().max()  # far from float rounding
    assert torch.equal(torch.sign(update[clear]), -torch.sign(clipped[clear]))
    assert ((torch.sign(clipped) != torch.sign(unclipped)) & clear).sum() > 100


# -- noise and reproducibility -------------------------------------------------------


def test_noise_is_seeded_and_added():
    images, labels, keys = site(patients=10, per_patient=2)

    def run(seed: int, sigma: float, secret: bytes = b"site-secret") -> torch.Tensor:
        model = build_model(SIZE, width=4)
        train_private(model, images, labels, keys, settings(), DPConfig(noise_multiplier=sigma), seed=seed,
                      secret=secret)
        return weights(model)

    first = run(7, 1.0)
    assert torch.equal(first, run(7, 1.0))  # same seed and secret, same weights
    assert not torch.equal(first, run(8, 1.0))  # another seed, other noise and sample
    assert not torch.equal(first, run(7, 1.0, secret=b"another-site"))  # the seed alone does not fix the noise
    assert not torch.allclose(first, run(7, 0.0), atol=1e-4)  # sigma > 0 adds noise


def test_proximal_term_keeps_weights_near_the_global_model():
    images, labels, keys = site(patients=10, per_patient=2)
    drift = {}
    for mu in (0.0, 50.0):
        model = build_model(SIZE, width=4)
        start = weights(model)
        train_private(model, images, labels, keys, settings(local_epochs=4, proximal_mu=mu),
                      DPConfig(noise_multiplier=1.0), seed=3)
        drift[mu] = (weights(model) - start).norm()
    assert drift[50.0] < 0.8 * drift[0.0]


# -- learning under noise -------------------------------------------------------------


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    positive, negative = scores[labels == 1], scores[labels == 0]
    wins = (positive[:, None] > negative[None, :]).float() + 0.5 * (positive[:, None] == negative[None, :]).float()
    return wins.mean().item()


def test_learns_a_separable_task_under_dp():
    size = 24
    images, labels, keys = site(patients=120, per_patient=3, size=size, seed=0, contrast=0.6)
    test_images, test_labels, _ = site(patients=60, per_patient=1, size=size, seed=1, contrast=0.6)
    model = build_model(size, width=8)
    result, plan = train_private(model, images, labels, keys,
                                 settings(batch_size=16, local_epochs=10, learning_rate=0.005, image_size=size),
                                 DPConfig(noise_multiplier=0.8), seed=1)
    assert plan.steps == 10 * 8
    model.eval()
    with torch.no_grad():
        scores = model(test_images)
    assert auc(scores, test_labels) > 0.8
