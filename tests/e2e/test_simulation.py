"""End to end: `flwr run` on a local simulation SuperLink, the real ServerApp and ClientApps.

Virtual sites are synthetic hospitals that go through ingest, de-identification and the
encrypted store, exactly like real sites. A bad run config, and FedAdam with client-level
DP resuming from a checkpoint, are tested in process (tests/integration/test_server_app.py):
each `flwr run` costs ~20 s of start-up here.
"""
import json
import os
from pathlib import Path

import pytest

from client.virtual_site import ensure_virtual_site
from server.local_simulation import LocalSimulation

REPO = Path(__file__).resolve().parents[2]
TINY = {"image-size": 16, "local-epochs": 1, "batch-size": 4, "sim-patients": 16, "seed": 3, "round-timeout": 120.0}


def _run(tmp_path, *, sites, rounds, run_name="e2e", **settings):
    config = dict(TINY, sites=sites, rounds=rounds, **settings, run_name=run_name,
                  runs_dir=tmp_path / "runs", sim_cache_dir=tmp_path / "cache")
    config = {k.replace("_", "-"): v for k, v in config.items()}
    with LocalSimulation(REPO, work_dir=tmp_path / "sim") as simulation:
        completed = simulation.run(sites=sites, run_config=config, timeout=240, capture=True)
    return completed, tmp_path / "runs" / run_name


@pytest.mark.timeout(300)
def test_two_sites_two_rounds_end_to_end(tmp_path):
    completed, run_dir = _run(tmp_path, sites=2, rounds=2)
    assert completed.returncode == 0, completed.stdout[-3000:]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2]
    for line in lines:
        assert sorted(line["sites"]) == ["site-000", "site-001"]
        assert line["failures"] == []
        assert line["train"]["num-examples"] > 0 and line["train"]["train-loss"] > 0
        assert 0.0 <= line["heldout"]["auc"] <= 1.0
        for report in line["privacy"]["sites"].values():
            assert report["mode"] == "dp" and report["unit"] == "patient" and report["epsilon"] > 0
        assert line["wall_seconds"]["round"] > 0
    assert (run_dir / "model.safetensors").stat().st_size > 0
    assert (run_dir / "checkpoints" / "round-0002.json").exists()
    report = (run_dir / "report.html").read_text()
    assert "site-001" in report and "held-out" in report.lower()
    assert "finished 2 round(s)" in completed.stdout


@pytest.mark.timeout(300)
def test_a_failing_site_and_a_declining_site_are_reported_and_the_run_goes_on(tmp_path):
    def site(partition):
        return ensure_virtual_site(tmp_path / "cache", partition_id=partition, seed=TINY["seed"],
                                   patients=TINY["sim-patients"])

    os.chmod(site(1) / "keys" / "kek", 0o644)  # the site refuses a key file others can read
    # its budget is spent at once (it runs any app, as a virtual site does)
    (site(2) / "policy.toml").write_text("[privacy]\nmax-epsilon = 0.01\n[apps]\nallow-any-app = true\n")
    # Plain aggregation: SecAgg+ cannot hide a single remaining site's update (see test_secure_aggregation).
    completed, run_dir = _run(tmp_path, sites=3, rounds=1, min_sites=1, aggregation="plain")
    assert completed.returncode == 0, completed.stdout[-3000:]
    (line,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [site for site, metrics in sorted(line["sites"].items()) if metrics["train"]] == ["site-000"]
    assert sorted(line["privacy"]["sites"]) == ["site-000"]
    train_failures = {f["site"]: f for f in line["failures"] if f["phase"] == "train"}
    assert train_failures["site-001"]["kind"] == "SiteKeyError" and "chmod" in train_failures["site-001"]["reason"]
    assert train_failures["site-002"]["declined"] == "privacy-budget"
    assert "site site-002 declined: privacy budget" in completed.stdout
    assert line["privacy"]["sites"]["site-000"]["epsilon"] > 0
    card = (run_dir / "model_card.md").read_text()
    assert "privacy unit is the **patient**" in card and "site-000" in card
