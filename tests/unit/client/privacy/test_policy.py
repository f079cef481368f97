"""Site policy: defaults, validation, delta, and the per-round decision."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from client.privacy import PolicyError, RoundRequest, SitePolicy, load_policy, noise_for_target_epsilon
from client.privacy.policy import REASON_KINDS, PrivacyRules

from .conftest import DATASET, OTHER, charge

HASH = "a" * 64
PATIENTS = 1000


def _write(site_dir: Path, text: str) -> None:
    site_dir.mkdir(parents=True, exist_ok=True)
    (site_dir / "policy.toml").write_text(text)


def _policy(**privacy) -> SitePolicy:
    """A policy with these privacy rules that runs any app (the app check is tested apart)."""
    return SitePolicy(privacy=PrivacyRules(**privacy), allow_any_app=True)


def _request(**overrides) -> RoundRequest:
    return RoundRequest(**{**dict(noise_multiplier=1.1, sample_rate=0.01, steps=100, run_id=1, server_round=1),
                           **overrides})


def test_defaults_without_a_policy_file(tmp_path):
    policy = load_policy(tmp_path)
    assert policy.privacy == PrivacyRules(max_epsilon=8.0, delta=0.0, min_noise_multiplier=0.5,
                                          max_rounds_per_run=100, allow_non_private=False)
    assert policy.allowed_hashes == () and dict(policy.deid) == {} and policy.source == "defaults"
    assert policy.allow_any_app is False  # secure by default: no app is allowed until listed
    assert not policy.allows_app(HASH) and not policy.allows_app("")


def test_policy_file_and_node_config_overrides(tmp_path):
    _write(tmp_path, f"""
[privacy]
max-epsilon = 4
delta = 1e-6
min-noise-multiplier = 0.8
max-rounds-per-run = 20
allow-non-private = true
[apps]
allowed-hashes = ["{HASH.upper()}"]
[deid]
keep-series-description = true
[deid.dates]
shift-days = 30
""")
    policy = load_policy(tmp_path)
    assert policy.privacy == PrivacyRules(4.0, 1e-6, 0.8, 20, True)
    assert policy.allowed_hashes == (HASH,) and policy.allows_app(HASH) and not policy.allows_app("b" * 64)
    assert policy.deid["dates"]["shift-days"] == 30
    with pytest.raises(TypeError):
        policy.deid["new"] = 1  # read-only

    node_config = {"site-dir": str(tmp_path), "partition-id": 3, "privacy.max-epsilon": 2.5,
                   "apps.allowed-hashes": f"{HASH},{'b' * 64}"}
    overridden = load_policy(tmp_path, node_config=node_config)
    assert overridden.privacy.max_epsilon == 2.5 and overridden.privacy.max_rounds_per_run == 20
    assert overridden.allowed_hashes == (HASH, "b" * 64) and "node config" in overridden.source


def test_every_problem_is_reported_at_once(tmp_path):
    _write(tmp_path, """
[privacy]
max-epsilon = -1
delta = 1.5
min-noise-multiplier = "high"
max-rounds-per-run = 0
allow-non-private = "no"
max-epsilom = 3
[apps]
allowed-hashes = ["not-a-hash"]
[budget]
x = 1
""")
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    err = info.value
    assert len(err.problems) == 8, err.problems
    for setting in ("max-epsilon", "delta", "min-noise-multiplier", "max-rounds-per-run", "allow-non-private",
                    "max-epsilom", "allowed-hashes", "[budget]"):
        assert any(setting in p for p in err.problems), setting
    assert all("rule:" in p and "fix:" in p for p in err.problems)
    assert str(tmp_path / "policy.toml") in str(err) and "8 problem(s)" in str(err)


def test_node_config_overrides_are_validated_too(tmp_path):
    with pytest.raises(PolicyError, match=r"\[privacy\] max-epsilon.*rule: a finite number > 0"):
        load_policy(tmp_path, node_config={"privacy.max-epsilon": "lots"})


def test_invalid_toml_is_a_policy_error(tmp_path):
    _write(tmp_path, "[privacy\nmax-epsilon = 1\n")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(tmp_path)


def test_resolve_delta():
    assert _policy().resolve_delta(PATIENTS) == pytest.approx(1 / (10 * PATIENTS))
    assert _policy(delta=1e-5).resolve_delta(PATIENTS) == 1e-5
    assert _policy(delta=1e-4).resolve_delta(PATIENTS) == 1e-4  # exactly 1 / (10 * patients)
    with pytest.raises(PolicyError, match=r"\[privacy\] delta.*at or above 1 / patients.*fix: set delta = 0.0"):
        _policy(delta=0.001).resolve_delta(PATIENTS)  # = 1 / patients
    with pytest.raises(PolicyError, match=r"\[privacy\] delta.*above 1 / \(10 \* patients\)"):
        _policy(delta=5e-4).resolve_delta(PATIENTS)
    with pytest.raises(ValueError, match="patients"):
        _policy().resolve_delta(0)


def test_decide_accepts_within_budget_and_declines_over_it(ledger):
    policy = _policy(max_epsilon=1.0)
    first = policy.decide(_request(steps=200), ledger, DATASET, PATIENTS)
    assert first.accept and first.reason_kind == "accepted" and first.projected.epsilon <= 1.0
    charge(ledger, steps=200)
    # the same dataset cannot afford much more; another dataset has its own budget
    big = _request(steps=5000, server_round=2)
    declined = policy.decide(big, ledger, DATASET, PATIENTS)
    assert not declined.accept and declined.reason_kind == "privacy-budget"
    assert declined.projected.epsilon > 1.0 and "max-epsilon" in declined.message
    assert not policy.decide(big, ledger, OTHER, PATIENTS).accept  # 5000 steps alone is over budget too
    assert policy.decide(_request(steps=200), ledger, OTHER, PATIENTS).accept


def test_decide_budget_counts_the_whole_history(ledger):
    policy = _policy(max_epsilon=2.0)
    delta = policy.resolve_delta(PATIENTS)
    rnd = 0
    while policy.decide(_request(steps=300, server_round=rnd), ledger, DATASET, PATIENTS).accept:
        charge(ledger, steps=300, server_round=rnd)
        rnd += 1
        assert rnd < 50
    assert rnd >= 2  # several rounds fit, then the lifetime budget stops the site
    assert ledger.spent(DATASET, delta).epsilon <= 2.0 < ledger.projected(DATASET, delta, 1.1, 0.01, 300).epsilon


def test_decide_noise_floor_and_non_private(ledger):
    assert _policy(min_noise_multiplier=0.8).decide(_request(noise_multiplier=0.7), ledger, DATASET,
                                                    PATIENTS).reason_kind == "noise-below-minimum"
    refused = _policy().decide(_request(noise_multiplier=0.0), ledger, DATASET, PATIENTS)
    assert not refused.accept and refused.reason_kind == "non-private-refused"
    allowing = _policy(allow_non_private=True)
    ok = allowing.decide(_request(noise_multiplier=0.0), ledger, DATASET, PATIENTS)
    assert ok.accept and math.isinf(ok.projected.epsilon) and "unbounded" in ok.message
    charge(ledger, sigma=0.0)
    after = allowing.decide(_request(server_round=2), ledger, DATASET, PATIENTS)
    assert not after.accept and after.reason_kind == "privacy-budget"


def test_decide_too_many_rounds_counts_this_runs_rounds(ledger):
    policy = _policy(max_rounds_per_run=2)
    for rnd in (1, 2):
        charge(ledger, run_id=7, server_round=rnd, steps=10)
    third = policy.decide(_request(run_id=7, server_round=3, steps=10), ledger, DATASET, PATIENTS)
    assert not third.accept and third.reason_kind == "too-many-rounds" and "max-rounds-per-run" in third.message
    assert policy.decide(_request(run_id=7, server_round=2, steps=10), ledger, DATASET, PATIENTS).accept  # retry
    assert policy.decide(_request(run_id=8, server_round=3, steps=10), ledger, DATASET, PATIENTS).accept  # new run


def test_decide_app_and_malformed_requests(ledger):
    policy = SitePolicy(allowed_hashes=(HASH,))
    assert policy.decide(_request(app=HASH), ledger, DATASET, PATIENTS).accept
    assert policy.decide(_request(app="b" * 64), ledger, DATASET, PATIENTS).reason_kind == "app-not-allowed"
    assert policy.decide(_request(), ledger, DATASET, PATIENTS).reason_kind == "app-not-allowed"
    for bad in (dict(sample_rate=1.5), dict(steps=0), dict(noise_multiplier=float("nan")), dict(server_round=-1)):
        d = SitePolicy().decide(_request(**bad), ledger, DATASET, PATIENTS)
        assert not d.accept and d.reason_kind == "invalid-request"
    assert set(REASON_KINDS) >= {"privacy-budget", "noise-below-minimum", "too-many-rounds", "non-private-refused"}


def test_noise_from_the_search_is_accepted(ledger):
    policy = _policy(max_epsilon=3.0)
    charge(ledger, sigma=1.2, steps=400)
    delta = policy.resolve_delta(PATIENTS)
    sigma = noise_for_target_epsilon(3.0, delta, 0.01, 1000, ledger.history(DATASET))
    assert policy.decide(_request(noise_multiplier=sigma, steps=1000, server_round=2), ledger, DATASET,
                         PATIENTS).accept
    assert not policy.decide(_request(noise_multiplier=sigma * 0.8, steps=1000, server_round=2), ledger,
                             DATASET, PATIENTS).accept


DIGEST = "c0ffee" + "0" * 58


def test_empty_allowed_hashes_declines_every_app_naming_its_digest_and_the_fix(ledger):
    decision = SitePolicy().decide(_request(app=DIGEST.upper()), ledger, DATASET, PATIENTS)
    assert not decision.accept and decision.reason_kind == "app-not-allowed" and decision.projected is None
    assert DIGEST in decision.message and "allows no app yet" in decision.message
    assert "[apps] allowed-hashes" in decision.message and "policy.toml" in decision.message
    assert "fedrad-site app digest" in decision.message
    unknown = SitePolicy().decide(_request(), ledger, DATASET, PATIENTS)
    assert unknown.reason_kind == "app-not-allowed" and "digest is unknown" in unknown.message
    assert ledger.entries(DATASET) == []  # deciding never charges


def test_a_listed_digest_is_accepted_and_any_other_declined(ledger):
    policy = SitePolicy(allowed_hashes=(DIGEST,))
    assert policy.decide(_request(app=DIGEST), ledger, DATASET, PATIENTS).accept
    other = policy.decide(_request(app=HASH), ledger, DATASET, PATIENTS)
    assert other.reason_kind == "app-not-allowed" and HASH in other.message and DIGEST not in other.message
    assert "not in the site's [apps] allowed-hashes" in other.message


def test_allow_any_app_from_the_file_and_the_node_config(tmp_path, ledger):
    _write(tmp_path, "[apps]\nallow-any-app = true\n")
    policy = load_policy(tmp_path)
    assert policy.allow_any_app and policy.allows_app(HASH) and policy.allows_app("")
    assert policy.decide(_request(app=HASH), ledger, DATASET, PATIENTS).accept
    assert not load_policy(tmp_path, node_config={"apps.allow-any-app": False}).allows_app(HASH)
    with pytest.raises(PolicyError, match=r"\[apps\] allow-any-app.*rule: true or false"):
        load_policy(tmp_path, node_config={"apps.allow-any-app": "yes"})


def test_the_app_decline_message_carries_nothing_but_the_digest(tmp_path, ledger):
    """The message goes to the coordinator: the same text for any site, path or dataset."""
    messages = set()
    for name in ("a", "b"):
        site_dir = tmp_path / name / "hospital-with-patients"
        _write(site_dir, "[privacy]\nmax-epsilon = 3\n")
        decision = load_policy(site_dir).decide(_request(app=DIGEST, run_id=name), ledger, name, PATIENTS)
        assert decision.reason_kind == "app-not-allowed" and str(tmp_path) not in decision.message
        messages.add(decision.message.replace(DIGEST, "<digest>"))
    assert len(messages) == 1 and "<digest>" in messages.pop()
