"""The site's privacy: accountant maths, the privacy ledger, the site policy, the report.

- :mod:`client.privacy.accounting` — epsilon of an accountant history (Opacus RDP and
  PRV, the tighter reported), and the noise needed for a target epsilon.
- :mod:`client.privacy.ledger` — ``<site-dir>/ledger/``: write-ahead, authenticated,
  anchored record of every DP-SGD step the site ran, per dataset fingerprint.
- :mod:`client.privacy.policy` — ``<site-dir>/policy.toml``: the site's budget and rules,
  and the per-round accept/decline decision.
- :mod:`client.privacy.report` — the data of ``fedrad-site ledger show``.

Usage in the ClientApp, per round::

    policy = load_policy(site_dir, node_config=context.node_config)
    ledger = PrivacyLedger.open(site_dir, keys.site_secret)
    decision = policy.decide(RoundRequest(...), ledger, dataset, patients)
    if decision.accept:
        seq = ledger.charge(dataset=..., noise_multiplier=..., sample_rate=..., steps=...,
                            run_id=..., server_round=...)   # durable before training
        ... train ...
        ledger.settle(seq, steps_done)
"""

from client.privacy.accounting import AccountingError, PrivacySpent, epsilon, noise_for_target_epsilon
from client.privacy.ledger import LedgerError, PrivacyLedger
from client.privacy.policy import Decision, PolicyError, RoundRequest, SitePolicy, load_policy
from client.privacy.report import ledger_report

__all__ = [
    "AccountingError", "Decision", "LedgerError", "PolicyError", "PrivacyLedger", "PrivacySpent",
    "RoundRequest", "SitePolicy", "epsilon", "ledger_report", "load_policy", "noise_for_target_epsilon",
]
