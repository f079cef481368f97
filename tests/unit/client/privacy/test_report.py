"""`ledger show` data: every entry, totals, recomputable by anyone."""

from __future__ import annotations

import json

import pytest
from opacus.accountants import RDPAccountant

from client.privacy import LedgerError, PrivacyLedger, ledger_report

from .conftest import DATASET, OTHER, charge


def test_report_lists_entries_and_totals_that_recompute(site, ledger):
    site_dir, keys = site
    ledger.settle(charge(ledger, steps=120, run_id=3, server_round=1), steps_done=120)
    charge(ledger, sigma=0.9, q=0.02, steps=80, run_id=3, server_round=2)
    charge(ledger, dataset=OTHER, sigma=2.0, steps=50)

    report = ledger_report(site_dir, keys.site_secret, delta=1e-5)
    text = json.dumps(report, allow_nan=False)  # JSON-serialisable, no NaN/inf
    report = json.loads(text)
    assert report["generation"] == ledger.generation() == 4
    mine = report["datasets"][DATASET]
    assert [(e["seq"], e["status"], e["run_id"], e["server_round"]) for e in mine["entries"]] == [
        (1, "completed", 3, 1), (2, "charged", 3, 2)]
    assert mine["history"] == [[1.1, 0.01, 120], [0.9, 0.02, 80]]
    totals = mine["totals"]
    assert totals["delta"] == 1e-5 and totals["accountant"] in ("rdp", "prv") and totals["steps"] == 200
    acc = RDPAccountant()
    acc.history = [tuple(h) for h in mine["history"]]
    assert totals["rdp_epsilon"] == pytest.approx(acc.get_epsilon(totals["delta"]), rel=1e-9)
    assert totals["epsilon"] <= totals["rdp_epsilon"]
    assert report["datasets"][OTHER]["totals"]["steps"] == 50
    assert "dataset" not in mine["entries"][0]  # the key of the map already says it


def test_report_delta_from_policy_and_patients(site, ledger):
    site_dir, keys = site
    charge(ledger)
    charge(ledger, dataset=OTHER)
    report = ledger_report(site_dir, keys.site_secret, patients={DATASET: 500})
    assert report["datasets"][DATASET]["totals"]["delta"] == pytest.approx(1 / 5000)
    assert report["datasets"][OTHER]["totals"] is None  # no patient count, no delta given
    assert ledger_report(site_dir, keys.site_secret, patients=2000)["datasets"][OTHER]["totals"]["delta"] == \
        pytest.approx(1 / 20000)
    with pytest.raises(ValueError, match="patients"):
        ledger_report(site_dir, keys.site_secret)


def test_report_of_non_private_training_is_unbounded(site, ledger):
    site_dir, keys = site
    charge(ledger, sigma=0.0)
    totals = ledger_report(site_dir, keys.site_secret, delta=1e-5)["datasets"][DATASET]["totals"]
    assert totals["epsilon"] is None and totals["unbounded"] is True


def test_report_reads_only_and_refuses_a_tampered_ledger(site):
    site_dir, keys = site
    assert ledger_report(site_dir, keys.site_secret, delta=1e-5)["datasets"] == {}
    assert not (site_dir / "ledger").exists()  # showing a fresh site creates nothing
    ledger = PrivacyLedger.open(site_dir, keys.site_secret)
    charge(ledger)
    path = site_dir / "ledger" / "ledger.json"
    path.write_bytes(path.read_bytes().replace(b'"steps":100', b'"steps":1'))
    with pytest.raises(LedgerError, match="modified or corrupted"):
        ledger_report(site_dir, keys.site_secret, delta=1e-5)
