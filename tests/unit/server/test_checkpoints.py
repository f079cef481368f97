import json

import numpy as np
import pytest
import torch

from common.config import RunConfig
from common.model import build_model
from common.weights import plain_state_dict
from server.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from server.strategies import build_strategy, restore_strategy_state, strategy_state


def test_checkpoint_round_trip_with_strategy_state(tmp_path):
    weights = plain_state_dict(build_model(32))
    moments = {"m_t/head.bias": np.ones(1, dtype=np.float32), "v_t/head.bias": np.full(1, 2.0, dtype=np.float32)}
    path = save_checkpoint(tmp_path, 3, weights, moments, [{"round": 1}], {"rounds": 5})
    loaded = load_checkpoint(path)
    assert loaded.server_round == 3 and loaded.history == [{"round": 1}]
    assert all(torch.equal(weights[k], loaded.weights[k]) for k in weights)
    strategy = build_strategy(RunConfig(strategy="fedadam"))
    restore_strategy_state(strategy, loaded.strategy_state)
    assert np.array_equal(strategy_state(strategy)["v_t/head.bias"], moments["v_t/head.bias"])
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_or_foreign_checkpoint_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="resume-from"):
        load_checkpoint(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(tmp_path / "x.json")


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam"])
def test_every_strategy_name_builds(name):
    assert build_strategy(RunConfig(strategy=name)) is not None
