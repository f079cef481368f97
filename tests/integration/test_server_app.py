"""The ServerApp's entry point with our real ClientApp, sites called in process through
Flower's wire format: a bad run config stops it before the first round, a failing and a
declining site are reported while the run goes on, a run that skips the sites' evaluation
still writes every result, and FedAdam with client-level DP resumes exactly from a
checkpoint. (tests/e2e runs the same app under `flwr run`.)"""
import json
import os

import pytest
from flwr.app import Context, RecordDict
from safetensors.numpy import load_file

from client.virtual_site import ensure_virtual_site
from common.model import build_model
from common.config import ConfigError
from server.app import main
from server.checkpoints import load_checkpoint
from server.federation import FederationError
from tests.integration.sites_in_process import SitesInProcess

TINY = {"image-size": 16, "local-epochs": 1, "batch-size": 4, "sim-patients": 16, "seed": 3,
        "round-timeout": 30.0, "heldout-eval": False, "sites": 2, "aggregation": "plain"}


def _context(run_config: dict) -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)


def test_a_bad_run_config_fails_before_the_first_round_naming_every_setting(tmp_path):
    run_config = dict(TINY, rounds=-1, strategy="fedsgd", **{"runs-dir": str(tmp_path / "runs")})
    grid = SitesInProcess(2, run_config)
    with pytest.raises(ConfigError) as error:
        main(grid, _context(run_config))
    assert "unknown strategy 'fedsgd'" in str(error.value) and "'rounds' is -1" in str(error.value)
    assert not (tmp_path / "runs").exists() and grid.received == []


@pytest.mark.timeout(180)
def test_a_failing_site_and_a_declining_site_are_reported_and_the_run_goes_on(tmp_path, capsys):
    def site(partition):
        return ensure_virtual_site(tmp_path / "cache", partition_id=partition, seed=TINY["seed"],
                                   patients=TINY["sim-patients"])

    os.chmod(site(1) / "keys" / "kek", 0o644)  # the site refuses a key file others can read
    # its budget is spent at once (it runs any app, as a virtual site does)
    (site(2) / "policy.toml").write_text("[privacy]\nmax-epsilon = 0.01\n[apps]\nallow-any-app = true\n")
    # Plain aggregation: SecAgg+ cannot hide a single remaining site's update (see test_secure_aggregation).
    run_config = dict(TINY, sites=3, rounds=1, **{"min-sites": 1, "heldout-eval": True, "run-name": "failing",
                                                   "runs-dir": str(tmp_path / "runs"),
                                                   "sim-cache-dir": str(tmp_path / "cache")})
    main(SitesInProcess(3, run_config), _context(run_config))
    run_dir = tmp_path / "runs" / "failing"
    (line,) = [json.loads(text) for text in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [name for name, metrics in sorted(line["sites"].items()) if metrics["train"]] == ["site-000"]
    assert sorted(line["privacy"]["sites"]) == ["site-000"]
    train_failures = {f["site"]: f for f in line["failures"] if f["phase"] == "train"}
    assert train_failures["site-001"]["kind"] == "SiteKeyError" and "chmod" in train_failures["site-001"]["reason"]
    assert train_failures["site-002"]["declined"] == "privacy-budget"
    assert "site site-002 declined: privacy budget" in capsys.readouterr().out
    assert line["privacy"]["sites"]["site-000"]["epsilon"] > 0 and 0.0 <= line["heldout"]["auc"] <= 1.0
    card = (run_dir / "model_card.md").read_text()
    assert "privacy unit is the **patient**" in card and "site-000" in card


@pytest.mark.timeout(120)
def test_fraction_evaluate_zero_skips_the_sites_evaluation(tmp_path, capsys):
    run_config = dict(TINY, rounds=1, **{"fraction-evaluate": 0.0, "runs-dir": str(tmp_path / "runs"),
                                         "sim-cache-dir": str(tmp_path / "cache"), "run-name": "no-eval"})
    grid = SitesInProcess(2, run_config)
    main(grid, _context(run_config))
    assert {m.metadata.message_type for m in grid.received} == {"train"}
    run_dir = tmp_path / "runs" / "no-eval"
    (line,) = [json.loads(text) for text in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert line["evaluate"] is None and line["failures"] == []
    assert all(site["train"] and site["evaluate"] is None for site in line["sites"].values())
    assert (run_dir / "report.html").exists() and (run_dir / "model_card.md").exists()
    assert "finished 1 round(s)" in capsys.readouterr().out


@pytest.mark.timeout(240)
def test_fedadam_with_client_level_dp_resumes_exactly_from_a_checkpoint(tmp_path, capsys):
    """Flower's FedAdam and its adaptive-clipping DP wrapper keep their state in the
    checkpoint: a run resumed from round 1 repeats round 1's line exactly and goes on."""
    base = dict(TINY, strategy="fedadam", **{"client-dp": "adaptive", "runs-dir": str(tmp_path / "runs"),
                                             "sim-cache-dir": str(tmp_path / "cache")})
    first = dict(base, rounds=1, **{"run-name": "first"})
    main(SitesInProcess(2, first), _context(first))
    first_dir = tmp_path / "runs" / "first"
    checkpoint = first_dir / "checkpoints" / "round-0001.json"
    second = dict(base, rounds=2, **{"run-name": "second", "resume-from": str(checkpoint)})
    main(SitesInProcess(2, second), _context(second))
    assert "resuming from round 1" in capsys.readouterr().out
    second_dir = tmp_path / "runs" / "second"
    lines = [json.loads(text) for text in (second_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2] and lines[1]["failures"] == []
    assert lines[0] == json.loads((first_dir / "metrics.jsonl").read_text().splitlines()[0])
    state = load_file(str(second_dir / "checkpoints" / "round-0002.strategy.safetensors"))
    assert "client-dp/clipping-norm" in state and any(k.startswith("v_t/") for k in state)


@pytest.mark.timeout(240)
def test_a_smaller_model_width_reaches_the_sites_the_held_out_site_and_the_model_card(tmp_path):
    run_config = dict(TINY, rounds=1, **{"model-width": 8, "heldout-eval": True, "runs-dir": str(tmp_path / "runs"),
                                         "sim-cache-dir": str(tmp_path / "cache"), "run-name": "narrow"})
    main(SitesInProcess(2, run_config), _context(run_config))
    run_dir = tmp_path / "runs" / "narrow"
    (line,) = [json.loads(text) for text in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert line["failures"] == [] and line["evaluate"] is not None
    assert load_checkpoint(run_dir / "checkpoints" / "round-0001.json").weights["stem.0.weight"].shape[0] == 8
    card = (run_dir / "model_card.md").read_text()
    parameters = sum(p.numel() for p in build_model(16, width=8).parameters())
    assert f"width 8, {parameters:,} parameters" in card

    wider = dict(run_config, rounds=2, **{"model-width": 16, "run-name": "wider",
                                          "resume-from": str(run_dir / "checkpoints" / "round-0001.json")})
    with pytest.raises(FederationError, match="another model-width"):
        main(SitesInProcess(2, wider), _context(wider))
