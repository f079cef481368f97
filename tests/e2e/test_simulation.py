"""End to end: `flwr run` on a local simulation SuperLink, the real ServerApp and ClientApps.

Virtual sites are synthetic hospitals that go through ingest, de-identification and the
encrypted store, exactly like real sites. A bad run config, a failing and a declining
site, and FedAdam with client-level DP resuming from a checkpoint, are tested in process
(tests/integration/test_server_app.py): each `flwr run` costs ~20 s of start-up here.
"""
import json
from pathlib import Path

import pytest

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
