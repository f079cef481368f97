"""Flower strategies by name, and the part of their state a checkpoint must keep."""
from __future__ import annotations

from typing import Callable

import numpy as np
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from common import messages as wire
from common.config import RunConfig


def _common(config: RunConfig) -> dict:
    return dict(
        fraction_train=1.0,
        fraction_evaluate=config.fraction_evaluate,  # 0: no site evaluates
        # Every connected site takes part; a round waits only for min-sites, so a site that
        # is down does not stall the federation (the run's start waits for all `sites`).
        min_train_nodes=config.min_sites,
        min_evaluate_nodes=config.min_sites,
        min_available_nodes=config.min_sites,
        weighted_by_key=wire.NUM_EXAMPLES,
        arrayrecord_key=wire.ARRAYS,
        configrecord_key=wire.CONFIG,
    )


STRATEGY_FACTORIES: dict[str, Callable[[RunConfig], Strategy]] = {
    "fedavg": lambda c: FedAvg(**_common(c)),
    "fedprox": lambda c: FedProx(**_common(c), proximal_mu=c.proximal_mu),
    "fedadam": lambda c: FedAdam(**_common(c), eta=c.server_learning_rate, eta_l=c.learning_rate),
    # Robust aggregation (aggregation = "plain" only: they need each site's update).
    # Stateless across rounds, so a checkpoint keeps no strategy state for them.
    "fedmedian": lambda c: FedMedian(**_common(c)),
    "fedtrimmedavg": lambda c: FedTrimmedAvg(**_common(c), beta=c.trim_fraction),
    "krum": lambda c: Krum(**_common(c), num_malicious_nodes=c.faulty_sites),
}


def build_strategy(config: RunConfig) -> Strategy:
    """The strategy the run config names, wrapped for client-level DP if asked.

    Client-level DP (`client-dp`): each site clips its whole model update (Flower's
    clipping mods in our ClientApp) and the coordinator adds Gaussian noise to the sum,
    protecting each *site's* participation, under trust in the coordinator to add the
    noise. It complements, and does not replace, site-level DP-SGD (see README).
    """
    strategy = STRATEGY_FACTORIES[config.strategy](config)
    if config.client_dp == "fixed":
        return DifferentialPrivacyClientSideFixedClipping(
            strategy, noise_multiplier=config.client_dp_noise, clipping_norm=config.client_dp_clip,
            num_sampled_clients=config.sites)
    if config.client_dp == "adaptive":
        # Flower's default clipped-count noise (sites / 20) is too small for federations of
        # fewer than 10 x noise sites; sigma_b = noise keeps the update noise at 1.15 x noise.
        return DifferentialPrivacyClientSideAdaptiveClipping(
            strategy, noise_multiplier=config.client_dp_noise, num_sampled_clients=config.sites,
            initial_clipping_norm=config.client_dp_clip,
            clipped_count_stddev=max(config.sites / 20, config.client_dp_noise))
    return strategy


def _inner(strategy: Strategy) -> Strategy:
    return getattr(strategy, "strategy", strategy)


def strategy_state(strategy: Strategy) -> dict[str, np.ndarray]:
    """Server-optimiser moments (FedAdam's m_t and v_t), flattened for a safetensors file."""
    state: dict[str, np.ndarray] = {}
    if hasattr(strategy, "clipping_norm") and hasattr(strategy, "strategy"):
        state["client-dp/clipping-norm"] = np.asarray([strategy.clipping_norm], dtype=np.float64)
    for moment in ("m_t", "v_t"):
        for name, value in (getattr(_inner(strategy), moment, None) or {}).items():
            state[f"{moment}/{name}"] = np.ascontiguousarray(value)
    return state


def restore_strategy_state(strategy: Strategy, state: dict[str, np.ndarray]) -> None:
    """Put moments saved by `strategy_state` back into the strategy."""
    if "client-dp/clipping-norm" in state and hasattr(strategy, "clipping_norm"):
        strategy.clipping_norm = float(state["client-dp/clipping-norm"][0])
    for moment in ("m_t", "v_t"):
        values = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(moment + "/")}
        if values:
            setattr(_inner(strategy), moment, values)
