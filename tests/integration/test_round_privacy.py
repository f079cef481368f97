"""A site's privacy per round, on a real (virtual) site: its store, policy and ledger."""
import shutil

import pytest

from client.keys import load_keys
from client.privacy import AccountingError, LedgerError, PolicyError, epsilon
from client.round_privacy import SiteDeclined, charge_round, dataset_key, settle_round
from client.site import resolve_site
from client.sitedata import load_site_data
from client.virtual_site import ensure_virtual_site
from common.config import TrainSettings

ANY_APP = "[apps]\nallow-any-app = true\n"  # a virtual site's policy runs any app (see test_app_policy.py)


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    """One virtual site (synthesised and ingested once, ~3 s); each test gets its own copy."""
    cache = tmp_path_factory.mktemp("template")
    ensure_virtual_site(cache, partition_id=0, seed=4, patients=30)
    return cache


@pytest.fixture()
def site(tmp_path, built_site):
    shutil.copytree(built_site, tmp_path / "cache")
    return resolve_site({"partition-id": 0}, {"sim-cache-dir": str(tmp_path / "cache"), "seed": 4, "sim-patients": 30})


def _round(site, data, settings, run_id=1):
    charge = charge_round(site.site_dir, site.keys.site_secret, data, settings, run_id=run_id,
                          node_config={}, non_private_steps=10)
    return charge, settle_round(charge, charge.plan.steps)


def test_two_runs_accumulate_and_epsilon_equals_an_independent_computation(site):
    data = load_site_data(site.store, 16)
    settings = TrainSettings(batch_size=4, noise_multiplier=1.1, rounds=2)
    first = _round(site, data, settings, run_id=1)[1]
    charge, second = _round(site, data, TrainSettings(batch_size=4, noise_multiplier=1.1, rounds=2, server_round=1),
                            run_id=2)
    assert second.epsilon > first.epsilon and second.entries == 2
    history = [(1.1, charge.plan.sample_rate, charge.plan.steps)] * 2
    assert second.epsilon == pytest.approx(epsilon(history, charge.delta).epsilon)
    assert charge.delta == pytest.approx(1 / (10 * data.patients))


def test_over_budget_declines_with_a_typed_reason(site):
    (site.site_dir / "policy.toml").write_text("[privacy]\nmax-epsilon = 0.5\n" + ANY_APP)
    data = load_site_data(site.store, 16)
    with pytest.raises(SiteDeclined) as declined:
        _round(site, data, TrainSettings(batch_size=4, noise_multiplier=1.0, rounds=1))
    assert declined.value.kind == "privacy-budget"


def test_non_private_request_is_declined_unless_the_site_allows_it(site):
    (site.site_dir / "policy.toml").write_text("[privacy]\nmax-epsilon = 8.0\n" + ANY_APP)
    data = load_site_data(site.store, 16)
    with pytest.raises(SiteDeclined) as declined:
        _round(site, data, TrainSettings(batch_size=4, privacy="none"))
    assert declined.value.kind == "non-private-refused"


def test_a_target_epsilon_is_spent_by_the_reported_bound_and_derived_noise_keeps_the_floor(site):
    (site.site_dir / "policy.toml").write_text("[privacy]\nmax-epsilon = 50.0\nmin-noise-multiplier = 0.3\n"
                                               + ANY_APP)
    data = load_site_data(site.store, 16)
    charge, spent = _round(site, data, TrainSettings(batch_size=4, target_epsilon=6.0, rounds=1))
    assert 0.3 < charge.noise_multiplier and 6.0 * 0.999 <= spent.epsilon <= 6.0  # the run's whole target
    (site.site_dir / "policy.toml").write_text("[privacy]\nmax-epsilon = 50.0\nmin-noise-multiplier = 2.0\n"
                                               + ANY_APP)
    charge, spent = _round(site, data, TrainSettings(batch_size=4, target_epsilon=6.0, rounds=1), run_id=2)
    assert charge.noise_multiplier == 2.0  # derived below the floor: the floor, spending less
    with pytest.raises(SiteDeclined) as declined:  # asked for explicitly: declined
        _round(site, data, TrainSettings(batch_size=4, noise_multiplier=1.0, rounds=1), run_id=3)
    assert declined.value.kind == "noise-below-minimum"


def test_target_epsilon_too_small_names_the_setting(site):
    data = load_site_data(site.store, 16)
    with pytest.raises(AccountingError, match="epsilon"):
        _round(site, data, TrainSettings(batch_size=4, target_epsilon=1e-4, rounds=50))


def test_delta_at_or_above_one_over_patients_names_delta(site):
    data = load_site_data(site.store, 16)
    (site.site_dir / "policy.toml").write_text(f"[privacy]\ndelta = {1 / data.patients}\n" + ANY_APP)
    with pytest.raises(PolicyError, match="delta"):
        _round(site, data, TrainSettings(batch_size=4, noise_multiplier=1.0))


def test_a_tampered_ledger_makes_the_site_refuse(site):
    data = load_site_data(site.store, 16)
    _round(site, data, TrainSettings(batch_size=4, noise_multiplier=1.0))
    ledger = site.site_dir / "ledger" / "ledger.json"
    ledger.write_bytes(ledger.read_bytes().replace(b'"steps":', b'"steps": ', 1))
    with pytest.raises(LedgerError, match="(?i)restore"):
        _round(site, data, TrainSettings(batch_size=4, noise_multiplier=1.0))


def test_dataset_key_is_stable_per_site_and_secret(site):
    keys = load_keys(site.site_dir)
    assert dataset_key(keys.site_secret) == dataset_key(keys.site_secret) != dataset_key(b"x" * 32)
