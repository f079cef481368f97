"""One round's privacy at a site: decide, charge before training, report after.

The coordinator only asks (privacy mode, noise multiplier or per-run target epsilon,
clipping norm, epochs, batch size). The site derives the noise, checks the request
against its own policy and ledger, records the spend durably *before* training
(write-ahead: a crash can never leave spent privacy unrecorded), and reports its
cumulative epsilon over everything it ever ran on this dataset.

The ledger's dataset key is one stable id per site (derived from the site secret), not
a hash of today's images: a patient ingested today stays in every later training
split, so the site's epsilon composes every DP-SGD step the site ever ran. This is
exact for the worst-case patient, and re-ingesting or rebuilding the store cannot
reset it.
"""
from __future__ import annotations

import functools
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from client.app_digest import running_app_digest
from client.privacy import PrivacyLedger, PrivacySpent, RoundRequest, load_policy, noise_for_target_epsilon
from client.sitedata import SiteData
from client.step_plan import StepPlan, plan_round
from common.config import TrainSettings


class SiteDeclined(Exception):
    """The site's policy declines the requested round; `kind` says why."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True)
class RoundCharge:
    ledger: PrivacyLedger
    seq: int
    dataset: str
    delta: float
    noise_multiplier: float
    plan: StepPlan


def check_app_allowed(site_dir: Path, node_config: Mapping[str, Any]) -> None:
    """Raise `SiteDeclined` ("app-not-allowed") unless the site's policy allows the running app.

    The app is named by its digest (`client.app_digest`); train checks it again in
    `charge_round`, evaluate only here: a site runs no part of an app it has not approved.
    """
    decision = load_policy(site_dir, node_config=node_config).check_app(running_app_digest())
    if not decision.accept:
        raise SiteDeclined(decision.reason_kind, decision.message)


@functools.lru_cache(maxsize=64)
def run_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The run's noise multiplier: the smallest whose epsilon over the run's `steps`, by the
    bound the site reports (the tighter of RDP and PRV), is the target (to 0.1 %). The same
    for every round of a run, so cached per process (about 1-3 s to compute; where Flower
    starts a ClientApp process per message, once a round)."""
    return noise_for_target_epsilon(target_epsilon, delta, sample_rate, steps, accountant="best", rel_tol=1e-3)


def dataset_key(site_secret: bytes) -> str:
    """The site's dataset id in its privacy ledger."""
    return "site-" + hmac.new(site_secret, b"fedrad/ledger-dataset", "sha256").hexdigest()[:24]


def charge_round(site_dir: Path, site_secret: bytes, data: SiteData, settings: TrainSettings, *,
                 run_id: int, node_config: Mapping[str, Any], non_private_steps: int) -> RoundCharge:
    """Check the request against the site's policy and ledger, then charge it (write-ahead)."""
    policy = load_policy(site_dir, node_config=node_config)
    patients = data.patients
    delta = policy.resolve_delta(patients)
    if settings.privacy == "none":
        plan = StepPlan(sample_rate=1.0, steps=non_private_steps, patients=patients)
        noise = 0.0
    else:
        plan = plan_round(patients, settings)
        # a derived noise never goes below the site's floor: the target is what the run may
        # spend at most; an explicit noise-multiplier below the floor is declined instead
        noise = settings.noise_multiplier or max(policy.privacy.min_noise_multiplier, run_noise(
            settings.target_epsilon, delta, plan.sample_rate, plan.steps * settings.rounds))
    ledger = PrivacyLedger.open(site_dir, site_secret)
    request = RoundRequest(noise_multiplier=noise, sample_rate=plan.sample_rate, steps=plan.steps,
                           run_id=run_id, server_round=settings.server_round, app=running_app_digest())
    dataset = dataset_key(site_secret)
    decision = policy.decide(request, ledger, dataset, patients)
    if not decision.accept:
        raise SiteDeclined(decision.reason_kind, decision.message)
    seq = ledger.charge(dataset=dataset, noise_multiplier=noise, sample_rate=plan.sample_rate,
                        steps=plan.steps, run_id=run_id, server_round=settings.server_round)
    return RoundCharge(ledger, seq, dataset, delta, noise, plan)


def settle_round(charge: RoundCharge, steps_done: int) -> PrivacySpent:
    """Mark the charged round done and return the site's cumulative spend on this dataset."""
    charge.ledger.settle(charge.seq, steps_done)
    return charge.ledger.spent(charge.dataset, charge.delta)


def privacy_record(charge: RoundCharge, spent: PrivacySpent) -> dict[str, float | int | str]:
    """What the site reports to the coordinator (numbers about the mechanism, no data)."""
    return {
        "mode": "dp" if charge.noise_multiplier > 0 else "none",
        "epsilon": spent.epsilon,
        "delta": spent.delta,
        "accountant": spent.accountant,
        "noise-multiplier": charge.noise_multiplier,
        "sample-rate": charge.plan.sample_rate,
        "steps": charge.plan.steps,
        "unit": "patient",
    }
