"""How many DP-SGD steps a round takes, and at what sample rate: no torch, no Opacus.

The site's privacy decision (client/round_privacy.py) needs the plan before any training,
and the evaluate path must not pay for importing Opacus (about 3 s per ClientApp
process in a deployment, where Flower starts one process per message).
"""
from __future__ import annotations

from dataclasses import dataclass

from common.config import TrainSettings


@dataclass(frozen=True)
class StepPlan:
    """What one round of private training does: `steps` SGM steps at sample rate q."""

    sample_rate: float  # q: probability that a patient is in a step's batch
    steps: int  # optimizer steps of the round (all local epochs)
    patients: int


def plan_round(patients: int, settings: TrainSettings) -> StepPlan:
    """The sample rate and step count of a round over `patients` patients.

    Mirrors Opacus' front door exactly: `DPDataLoader.from_data_loader` samples at
    q = 1 / len(DataLoader(patients, batch_size)) = 1 / ceil(patients / batch-size), and
    its `UniformWithReplacementSampler` yields `int(1 / q)` batches per epoch (which
    floating point makes one less than ceil(patients / batch-size) for some sizes, 93 say).
    """
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
    sample_rate = 1 / -(-patients // settings.batch_size)
    return StepPlan(sample_rate=sample_rate, steps=settings.local_epochs * int(1 / sample_rate), patients=patients)
