"""Epsilon against independent Opacus accountants; PRV fallback; the noise search."""

from __future__ import annotations

import json
import math

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from client.privacy import AccountingError, epsilon, noise_for_target_epsilon
from client.privacy.accounting import SEARCH_ORDERS, merge_history, rdp_epsilon

from .conftest import DATASET, OTHER, charge

DELTA = 1e-5


def _stepped(accountant, history):
    """An accountant fed one step at a time, the way Opacus' optimizer hook does."""
    for sigma, q, steps in history:
        for _ in range(steps):
            accountant.step(noise_multiplier=sigma, sample_rate=q)
    return accountant


def test_ledger_epsilon_equals_independent_opacus_accountants(ledger):
    runs = [(1.1, 0.01, 120), (0.9, 0.02, 60), (1.1, 0.01, 80), (1.3, 0.01, 40)]
    for i, (sigma, q, steps) in enumerate(runs, start=1):
        charge(ledger, sigma=sigma, q=q, steps=steps, run_id=i // 2, server_round=i)
    charge(ledger, dataset=OTHER, sigma=0.6, q=0.2, steps=500)  # must not leak into DATASET
    got = ledger.spent(DATASET, DELTA)

    rdp = _stepped(RDPAccountant(), runs).get_epsilon(DELTA)
    prv = _stepped(PRVAccountant(), runs).get_epsilon(DELTA)
    assert got.rdp_epsilon == pytest.approx(rdp, rel=1e-9)
    assert got.prv_epsilon == pytest.approx(prv, rel=1e-3)
    assert got.epsilon == min(got.rdp_epsilon, got.prv_epsilon)
    assert got.accountant == ("prv" if got.prv_epsilon < got.rdp_epsilon else "rdp")
    assert (got.steps, got.entries, got.delta) == (300, 4, DELTA)
    # and the other dataset's spend is its own
    other = ledger.spent(OTHER, DELTA)
    assert other.rdp_epsilon == pytest.approx(_stepped(RDPAccountant(), [(0.6, 0.2, 500)]).get_epsilon(DELTA))


def test_projected_is_the_history_plus_the_extra_work(ledger):
    charge(ledger, steps=200)
    before = ledger.spent(DATASET, DELTA)
    after = ledger.projected(DATASET, DELTA, 1.1, 0.01, 300)
    assert after.epsilon > before.epsilon
    assert after.epsilon == pytest.approx(epsilon([(1.1, 0.01, 500)], DELTA).epsilon, rel=1e-9)
    assert ledger.spent(DATASET, DELTA) == before  # projecting records nothing


def test_merging_equal_settings_is_exact():
    history = [(1.0, 0.01, 30), (2.0, 0.05, 10), (1.0, 0.01, 20), (2.0, 0.05, 0)]
    assert merge_history(history) == [(1.0, 0.01, 50), (2.0, 0.05, 10)]
    acc = RDPAccountant()
    acc.history = list(history)  # unmerged, in ledger order
    assert rdp_epsilon(merge_history(history), DELTA) == pytest.approx(acc.get_epsilon(DELTA), rel=1e-12)


def test_empty_and_non_private_histories():
    assert epsilon([], DELTA).epsilon == 0.0
    spent = epsilon([(1.0, 0.01, 10), (0.0, 0.01, 5)], DELTA)
    assert math.isinf(spent.epsilon) and "non-private" in spent.note
    d = spent.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["epsilon"] is None and d["unbounded"] is True


def test_prv_skipped_for_huge_step_counts_falls_back_to_rdp():
    history = [(1.0, 0.01, 1_000_000)]  # PRV would need a grid of ~10^9 points
    spent = epsilon(history, DELTA)
    assert spent.accountant == "rdp" and spent.prv_epsilon is None
    assert "prv skipped" in spent.note and "grid" in spent.note
    acc = RDPAccountant()
    acc.history = list(history)
    assert spent.epsilon == pytest.approx(acc.get_epsilon(DELTA), rel=1e-12)


def test_prv_failure_falls_back_to_rdp_and_says_why():
    # Opacus' PRV refuses a delta this small ("Floating point errors will dominate")
    spent = epsilon([(2.0, 0.01, 50)], 1e-16)
    assert spent.accountant == "rdp" and spent.prv_epsilon is None
    assert spent.note.startswith("prv failed") and math.isfinite(spent.epsilon)


@pytest.mark.parametrize("bad", [[(1.0, 0.0, 1)], [(1.0, 1.5, 1)], [(-1.0, 0.1, 1)], [(math.nan, 0.1, 1)],
                                 [(1.0, 0.1, -1)], [(1.0, 0.1, 1.5)], [(1.0, 0.1)]])
def test_invalid_histories_are_refused(bad):
    with pytest.raises(ValueError, match="history entry 0"):
        epsilon(bad, DELTA)


@pytest.mark.parametrize("delta", [0, 1, -1e-5, True])
def test_invalid_delta_is_refused(delta):
    with pytest.raises(ValueError, match="delta"):
        epsilon([(1.0, 0.01, 10)], delta)


def test_noise_for_target_epsilon_is_the_smallest_that_fits():
    prior = [(1.2, 0.01, 400)]
    target, q, steps = 3.0, 0.01, 1000
    sigma = noise_for_target_epsilon(target, DELTA, q, steps, prior)
    total = prior + [(sigma, q, steps)]
    assert rdp_epsilon(merge_history(total), DELTA) <= target
    assert epsilon(total, DELTA).epsilon <= target  # the reported bound never exceeds RDP
    smaller = prior + [(sigma * (1 - 1e-3), q, steps)]
    # minimal for the bound the search uses (integer orders: valid, at most ~1% looser)
    assert rdp_epsilon(merge_history(smaller), DELTA, SEARCH_ORDERS) > target
    # without the prior less noise is needed
    assert noise_for_target_epsilon(target, DELTA, q, steps) < sigma


@pytest.mark.parametrize("prior", [[], [(1.5, 0.02, 300)]])
def test_noise_for_target_epsilon_best_spends_the_target_by_the_reported_bound(prior):
    """What a site derives its run's noise with: the reported (PRV here) epsilon lands on the
    target from below, with less noise than the RDP answer."""
    target, q, steps = 2.0, 0.01, 500
    sigma = noise_for_target_epsilon(target, DELTA, q, steps, prior, accountant="best", rel_tol=1e-3)
    spent = epsilon(prior + [(sigma, q, steps)], DELTA)
    assert spent.accountant == "prv" and target * (1 - 1e-3) <= spent.epsilon <= target
    assert epsilon(prior + [(sigma * (1 - 2e-3), q, steps)], DELTA).epsilon > target
    assert sigma < 0.97 * noise_for_target_epsilon(target, DELTA, q, steps, prior)


def test_noise_for_target_epsilon_refuses_a_target_already_spent():
    prior = [(0.8, 0.05, 2000)]
    spent = epsilon(prior, DELTA).rdp_epsilon
    with pytest.raises(AccountingError, match=r"target_epsilon .* already spent.*max-epsilon"):
        noise_for_target_epsilon(spent * 0.9, DELTA, 0.01, 100, prior)


def test_noise_for_target_epsilon_refuses_a_target_needing_huge_noise():
    with pytest.raises(AccountingError, match=r"needs noise_multiplier > 100.*fewer steps"):
        noise_for_target_epsilon(0.01, DELTA, 0.5, 100_000)


def test_noise_for_target_epsilon_refuses_bad_settings():
    with pytest.raises(AccountingError, match="target_epsilon"):
        noise_for_target_epsilon(0.0, DELTA, 0.01, 10)
    with pytest.raises(ValueError, match="sample_rate"):
        noise_for_target_epsilon(1.0, DELTA, 0.0, 10)
    with pytest.raises(ValueError, match="steps"):
        noise_for_target_epsilon(1.0, DELTA, 0.01, 0)
