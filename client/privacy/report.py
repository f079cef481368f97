"""What ``fedrad-site ledger show`` prints: every entry and the totals, per dataset.

The report is JSON-serialisable (``json.dumps(report, allow_nan=False)`` works) and
holds each dataset's accountant ``history`` as Opacus takes it, so anyone can
recompute epsilon independently::

    from opacus.accountants import RDPAccountant
    acc = RDPAccountant(); acc.history = [tuple(h) for h in report["datasets"][fp]["history"]]
    acc.get_epsilon(report["datasets"][fp]["totals"]["delta"])

An unbounded epsilon (non-private training recorded) is ``null`` with
``"unbounded": true``. Reading the report writes nothing.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Mapping

from client.privacy.accounting import PRV_EPS_ERROR, epsilon
from client.privacy.ledger import PrivacyLedger
from client.privacy.policy import SitePolicy, load_policy

REPORT_FORMAT = "fedrad-ledger-report"
SHOWN_FIELDS = ("seq", "noise_multiplier", "sample_rate", "steps", "steps_charged", "steps_done", "status",
                "run_id", "server_round", "app", "created", "settled")


def ledger_report(
    site_dir: Path,
    site_secret: bytes,
    *,
    delta: float | None = None,
    patients: int | Mapping[str, int] | None = None,
    policy: SitePolicy | None = None,
) -> dict:
    """Per dataset fingerprint: entries, accountant history and totals at a delta.

    The delta is the policy's resolved delta when ``patients`` is given (one count for
    every dataset, or a mapping fingerprint -> count; ``policy`` defaults to the site's
    ``policy.toml``), else ``delta``. A dataset with neither gets totals ``None``.
    """
    if patients is None and delta is None:
        raise ValueError("pass patients (the policy resolves delta) or an explicit delta")
    if patients is not None and policy is None:
        policy = load_policy(site_dir)
    ledger = PrivacyLedger.open(site_dir, site_secret, create=False)
    entries = ledger.entries()
    datasets: dict[str, dict] = {}
    for fingerprint in dict.fromkeys(e["dataset"] for e in entries):
        mine = [e for e in entries if e["dataset"] == fingerprint]
        count = patients.get(fingerprint) if isinstance(patients, Mapping) else patients
        at = policy.resolve_delta(count) if count is not None else delta
        history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in mine]
        totals = None
        if at is not None:
            totals = epsilon(history, at).to_dict()
        datasets[fingerprint] = {
            "entries": [{k: e[k] for k in SHOWN_FIELDS} for e in mine],
            "history": [list(h) for h in history],
            "totals": totals,
        }
    return {
        "format": REPORT_FORMAT,
        "version": 1,
        "ledger": str(ledger.path),
        "generation": ledger.generation(),
        "accounting": {"opacus": version("opacus"), "rdp": "RDPAccountant, default orders",
                       "prv": f"PRVAccountant, eps_error {PRV_EPS_ERROR}, delta_error delta/1000",
                       "reported": "the smaller of the two bounds"},
        "datasets": datasets,
    }
