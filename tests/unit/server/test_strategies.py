"""Robust strategies: what they aggregate from hand-made site replies, and their checkpoint state."""
from __future__ import annotations

import numpy as np
import torch
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common import messages as wire
from common.config import ROBUST_STRATEGIES, STRATEGIES, RunConfig
from server.checkpoints import load_checkpoint, save_checkpoint
from server.strategies import STRATEGY_FACTORIES, build_strategy, restore_strategy_state, strategy_state

# Five sites; site 4 sends an outlier. Two parameters, so per-coordinate rules are visible:
# the outlier is huge in "w"'s first coordinate and tiny in "b".
HONEST = [np.array([1.0, 2.0]), np.array([1.3, 2.2]), np.array([0.9, 1.9]), np.array([1.05, 2.1])]
UPDATES = HONEST + [np.array([100.0, 2.05])]
BIASES = [0.1, 0.2, 0.3, 0.4, -50.0]
EXAMPLES = [10, 20, 30, 40, 1000]  # the outlier also claims many examples


@pytest.fixture(autouse=True)
def coordinator_identity(monkeypatch):
    """Messages are made in a coordinator's process: Flower needs its task identity."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _replies() -> list[Message]:
    replies = []
    for node, (w, b, n) in enumerate(zip(UPDATES, BIASES, EXAMPLES, strict=True), start=1):
        instruction = Message(RecordDict(), dst_node_id=node, message_type="train")
        content = RecordDict({
            wire.ARRAYS: ArrayRecord({"w": Array(w.astype(np.float32)), "b": Array(np.array([b], np.float32))}),
            wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: n, wire.TRAIN_LOSS: float(node)}),
        })
        replies.append(Message(content, reply_to=instruction))
    return replies


def _aggregate(name: str, **settings) -> tuple[dict[str, np.ndarray], MetricRecord]:
    config = RunConfig(strategy=name, aggregation="plain", sites=5, **settings)
    config.validate()
    arrays, metrics = build_strategy(config).aggregate_train(1, _replies())
    return {k: v.numpy() for k, v in arrays.items()}, metrics


def test_fedavg_is_pulled_by_the_outlier_which_is_why_robust_strategies_exist():
    arrays, _ = _aggregate("fedavg")
    assert arrays["w"][0] > 50 and arrays["b"][0] < -40


def test_fedmedian_takes_each_coordinates_median_and_ignores_the_outlier():
    arrays, metrics = _aggregate("fedmedian")
    np.testing.assert_allclose(arrays["w"], [1.05, 2.05], rtol=1e-6)  # medians of each coordinate
    np.testing.assert_allclose(arrays["b"], [0.2], rtol=1e-6)
    losses = [float(node) for node in range(1, 6)]  # metrics still average every site's, by examples
    assert metrics[wire.TRAIN_LOSS] == pytest.approx(np.average(losses, weights=EXAMPLES))


def test_fedtrimmedavg_drops_the_extremes_of_each_coordinate():
    arrays, _ = _aggregate("fedtrimmedavg", trim_fraction=0.2)  # 0.2 x 5 sites: one cut at each end
    np.testing.assert_allclose(arrays["w"], [np.mean([1.0, 1.3, 1.05]), np.mean([2.0, 2.1, 2.05])], rtol=1e-6)
    np.testing.assert_allclose(arrays["b"], [np.mean([0.1, 0.2, 0.3])], rtol=1e-6)


def test_krum_picks_one_honest_sites_update_whole():
    arrays, metrics = _aggregate("krum", faulty_sites=1)
    chosen = [i for i, w in enumerate(HONEST) if np.allclose(arrays["w"], w)]
    assert len(chosen) == 1 and np.allclose(arrays["b"], [BIASES[chosen[0]]])
    # Krum's score: the sum of squared distances to the n - f - 2 = 2 nearest other updates
    flat = [np.concatenate([w, [b]]) for w, b in zip(UPDATES, BIASES, strict=True)]
    scores = [sum(sorted(float(np.sum((x - y) ** 2)) for j, y in enumerate(flat) if j != i)[:2])
              for i, x in enumerate(flat)]
    assert sorted(scores)[1] - sorted(scores)[0] > 0.01  # no tie, so the choice is determined
    assert chosen[0] == int(np.argmin(scores))
    assert metrics[wire.TRAIN_LOSS] == float(chosen[0] + 1)  # only the chosen site's metrics


def test_every_strategy_has_a_factory():
    assert set(STRATEGY_FACTORIES) == set(STRATEGIES) and set(ROBUST_STRATEGIES) < set(STRATEGIES)


@pytest.mark.parametrize("name", ROBUST_STRATEGIES)
def test_robust_strategies_checkpoint_and_resume(tmp_path, name):
    config = RunConfig(strategy=name, aggregation="plain", sites=5, trim_fraction=0.2, faulty_sites=1)
    strategy = build_strategy(config)
    first, _ = strategy.aggregate_train(1, _replies())
    state = strategy_state(strategy)
    assert state == {}  # nothing carries over between rounds
    weights = {k: torch.from_numpy(v.numpy()) for k, v in first.items()}
    path = save_checkpoint(tmp_path, 1, weights, state, [{"round": 1}], config.to_dict())
    loaded = load_checkpoint(path)
    resumed = build_strategy(RunConfig.from_mapping(loaded.config))
    restore_strategy_state(resumed, loaded.strategy_state)
    again, _ = resumed.aggregate_train(2, _replies())
    for key in first:
        np.testing.assert_array_equal(again[key].numpy(), first[key].numpy())
