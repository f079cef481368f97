"""Shared fixtures: a real site (keys on disk) and its privacy ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.keys import SiteKeys, init_keys
from client.privacy import PrivacyLedger

DATASET = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


@pytest.fixture()
def site(tmp_path: Path) -> tuple[Path, SiteKeys]:
    site_dir = tmp_path / "site"
    return site_dir, init_keys(site_dir)


@pytest.fixture()
def ledger(site) -> PrivacyLedger:
    site_dir, keys = site
    return PrivacyLedger.open(site_dir, keys.site_secret)


def charge(ledger: PrivacyLedger, *, dataset: str = DATASET, sigma: float = 1.1, q: float = 0.01,
           steps: int = 100, run_id: int | str = 1, server_round: int = 1) -> int:
    return ledger.charge(dataset=dataset, noise_multiplier=sigma, sample_rate=q, steps=steps,
                         run_id=run_id, server_round=server_round)
