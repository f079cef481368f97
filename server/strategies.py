"""Flower strategies by name, and the part of their state a checkpoint must keep."""
from __future__ import annotations

from typing import Callable

import numpy as np
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, Strategy

from common import messages as wire
from common.config import RunConfig


def _common(config: RunConfig) -> dict:
    return dict(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=config.sites,
        min_evaluate_nodes=config.sites,
        min_available_nodes=config.sites,
        weighted_by_key=wire.NUM_EXAMPLES,
        arrayrecord_key=wire.ARRAYS,
        configrecord_key=wire.CONFIG,
    )


STRATEGY_FACTORIES: dict[str, Callable[[RunConfig], Strategy]] = {
    "fedavg": lambda c: FedAvg(**_common(c)),
    "fedprox": lambda c: FedProx(**_common(c), proximal_mu=c.proximal_mu),
    "fedadam": lambda c: FedAdam(**_common(c), eta=c.server_learning_rate, eta_l=c.learning_rate),
}


def build_strategy(config: RunConfig) -> Strategy:
    """The strategy the run config names (validated by RunConfig)."""
    return STRATEGY_FACTORIES[config.strategy](config)


def strategy_state(strategy: Strategy) -> dict[str, np.ndarray]:
    """Server-optimiser moments (FedAdam's m_t and v_t), flattened for a safetensors file."""
    state: dict[str, np.ndarray] = {}
    for moment in ("m_t", "v_t"):
        for name, value in (getattr(strategy, moment, None) or {}).items():
            state[f"{moment}/{name}"] = np.ascontiguousarray(value)
    return state


def restore_strategy_state(strategy: Strategy, state: dict[str, np.ndarray]) -> None:
    """Put moments saved by `strategy_state` back into the strategy."""
    for moment in ("m_t", "v_t"):
        values = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(moment + "/")}
        if values:
            setattr(strategy, moment, values)
