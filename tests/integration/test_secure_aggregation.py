"""SecAgg+ with our real ClientApp and DP-SGD, sites called in process through Flower's wire format."""
import math
import re

import numpy as np
import pytest
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from common.config import RunConfig
from common.weights import load_weights
from server.federation import FederationError, run_federation
from server.secure_round import QUANTIZATION_RANGE
from tests.integration.sites_in_process import SitesInProcess

TINY = dict(image_size=16, local_epochs=1, batch_size=4, sim_patients=16, seed=3, round_timeout=30.0,
            heldout_eval=False, sites=3, rounds=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("sites")


def _run(tmp_path, cache, name, **settings):
    config = RunConfig(**{**TINY, **settings}, run_name=name, runs_dir=str(tmp_path / "runs"), sim_cache_dir=str(cache))
    grid = SitesInProcess(config.sites, config.to_dict())
    result = run_federation(config, grid, say=lambda _: None)
    weights = {k: v.numpy() for k, v in load_weights(result.run_dir / "model.safetensors").items()}
    return weights, result.history, grid


def _initial(tmp_path, cache):
    from common.model import build_model
    from common.weights import plain_state_dict
    return {k: v.numpy() for k, v in plain_state_dict(build_model(16, seed=TINY["seed"])).items()}


@pytest.mark.timeout(240)
def test_secagg_equals_fedavg_within_quantisation_and_the_coordinator_sees_no_update(tmp_path, cache):
    plain, plain_history, plain_grid = _run(tmp_path, cache, "plain", aggregation="plain")
    secure, history, grid = _run(tmp_path, cache, "secure", aggregation="secagg+")
    start = _initial(tmp_path, cache)
    (line,) = history
    assert line["failures"] == [] and sorted(line["sites"]) == ["site-000", "site-001", "site-002"]
    # The same sites trained the same way (seeded sampling and noise): only aggregation differs.
    assert line["train"]["train-loss"] == pytest.approx(plain_history[0]["train"]["train-loss"])
    examples = [m["train"]["num-examples"] for m in line["sites"].values()]
    config = RunConfig()
    step = 2 * config.secagg_clipping_range / QUANTIZATION_RANGE
    # Stochastic rounding moves each site's weighted change by less than one quantisation step.
    tolerance = len(examples) * step * config.secagg_max_weight / sum(examples) + 1e-6
    moved = max(float(np.max(np.abs(plain[k] - start[k]))) for k in start)
    error = max(float(np.max(np.abs(plain[k] - secure[k]))) for k in start)
    assert moved > 50 * tolerance, "the round did not change the model enough to compare"
    assert error <= tolerance, (error, tolerance)

    # Everything the coordinator received under SecAgg+: no arrays, only masked vectors.
    updates = {}
    for reply in plain_grid.received:
        if "arrays" in reply.content.array_records and reply.metadata.message_type == "train":
            arrays = reply.content.array_records["arrays"]
            updates[reply.metadata.src_node_id] = np.concatenate(
                [(arrays[k].numpy() - start[k]).ravel() for k in start])
    assert len(updates) == 3
    masked_seen = 0
    for reply in grid.received:
        assert all(len(record) == 0 for record in reply.content.array_records.values())
        stage_record = reply.content.config_records.get(RECORD_KEY_CONFIGS, {})
        if Key.MASKED_PARAMETERS in stage_record:
            masked = np.concatenate([bytes_to_ndarray(b).ravel() for b in stage_record[Key.MASKED_PARAMETERS]])
            masked_seen += 1
            update = updates[reply.metadata.src_node_id]
            body = masked[1:1 + update.size].astype(np.float64)  # the first entry carries the weight
            assert abs(np.corrcoef(body, update)[0, 1]) < 0.05
            assert 0.45 < body.mean() / 2 ** 32 < 0.55  # uniform in [0, 2**32): nothing to read
    assert masked_seen == 3


@pytest.mark.timeout(240)
def test_secagg_round_completes_when_a_site_declines_and_another_disconnects(tmp_path, cache):
    config = RunConfig(**{**TINY, "sites": 4, "round_timeout": 3.0}, run_name="drop", runs_dir=str(tmp_path / "runs"),
                       sim_cache_dir=str(tmp_path / "own"))
    grid = SitesInProcess(config.sites, config.to_dict())
    from client.virtual_site import ensure_virtual_site
    site = ensure_virtual_site(tmp_path / "own", partition_id=1, seed=TINY["seed"], patients=TINY["sim_patients"])
    policy = re.sub(r"max-epsilon = [0-9.]+", "max-epsilon = 0.01", (site / "policy.toml").read_text())
    (site / "policy.toml").write_text(policy)  # its budget is spent at once
    grid.silence_after = {1003: 2}  # answers setup and share-keys, then disconnects before training
    result = run_federation(config, grid, say=lambda _: None)
    (line,) = result.history
    assert sorted(name for name, metrics in line["sites"].items() if metrics["train"]) == ["site-000", "site-002"]
    failures = {f["site"]: f for f in line["failures"]}
    assert failures["site-001"]["declined"] == "privacy-budget"
    assert any(f["kind"] == "no-reply" for f in line["failures"])
    assert math.isfinite(line["train"]["train-loss"])


@pytest.mark.timeout(240)
@pytest.mark.parametrize("aggregation", ["plain", "secagg+"])
def test_updates_beyond_the_norm_bound_are_refused_per_site(tmp_path, cache, aggregation):
    said = []
    config = RunConfig(**{**TINY, "sites": 2}, aggregation=aggregation, max_update_norm=1e-9, run_name="guard",
                       runs_dir=str(tmp_path / "runs"), sim_cache_dir=str(cache))
    with pytest.raises(FederationError, match="min-sites"):
        run_federation(config, SitesInProcess(2, config.to_dict()), say=said.append)
    refused = [s for s in said if "(update-refused)" in s and "exceeds the run's bound max-update-norm" in s]
    assert sorted(s.split()[3] for s in refused) == ["site-000", "site-001"]
    assert not (tmp_path / "runs" / "guard" / "metrics.jsonl").exists()  # nothing was aggregated


@pytest.mark.timeout(240)
@pytest.mark.parametrize("aggregation", ["plain", "secagg+"])
def test_fedadam_sends_the_sites_weights_in_the_models_dtype(tmp_path, cache, aggregation):
    """FedAdam's server optimiser computes in float64; round 2's sites must still accept its model."""
    weights, history, _ = _run(tmp_path, cache, f"adam-{aggregation}", strategy="fedadam", rounds=2, sites=2,
                               aggregation=aggregation)
    assert [line["round"] for line in history] == [1, 2]
    assert all(line["failures"] == [] and len(line["sites"]) == 2 for line in history)
    assert {array.dtype for array in weights.values()} == {np.dtype(np.float32)}
