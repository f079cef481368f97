"""Typed run settings, validated once at the edge and passed down.

`RunConfig` is what the coordinator reads from Flower's run config (pyproject's
`[tool.flwr.app.config]` plus `flwr run --run-config` overrides). `TrainSettings` is the
part a site needs for one round; it travels in the message's ConfigRecord.
Validation collects every problem and raises one `ConfigError` that names each
setting, the rule it breaks and the fix.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum")
# Robust strategies compare the sites' individual updates (coordinate-wise median, trimmed
# mean, Krum's distances), which secure aggregation hides: they need aggregation "plain".
ROBUST_STRATEGIES = ("fedmedian", "fedtrimmedavg", "krum")
PRIVACY_MODES = ("dp", "none")
CLIENT_DP_MODES = ("none", "fixed", "adaptive")
AGGREGATIONS = ("secagg+", "plain")
MODEL_WIDTHS = (4, 32)  # smallest and largest model-width (multiples of 4)


def is_model_width(width: int) -> bool:
    """Whether the CNN can be built at this width (its GroupNorms divide every layer's channels)."""
    return MODEL_WIDTHS[0] <= width <= MODEL_WIDTHS[1] and width % 4 == 0


class ConfigError(ValueError):
    """One or more settings are invalid; the message lists each with its fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid run settings:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """What a site needs to train or evaluate in one round."""

    server_round: int = 1
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.002
    image_size: int = 64
    model_width: int = 16
    proximal_mu: float = 0.0
    seed: int = 0
    rounds: int = 1
    privacy: str = "dp"
    noise_multiplier: float = 0.0
    target_epsilon: float = 8.0
    max_grad_norm: float = 1.0
    client_dp: str = "none"
    max_update_norm: float = 100.0
    secagg_clipping_range: float = 1.0
    secagg_max_weight: int = 10000

    def to_record(self) -> dict[str, int | float]:
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "TrainSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k.replace("-", "_"): v for k, v in record.items()}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Settings of one federated run (see README, "Run settings")."""

    run_name: str = "demo"
    sites: int = 4
    rounds: int = 5
    strategy: str = "fedavg"
    local_epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 0.002
    image_size: int = 64
    model_width: int = 16
    min_sites: int = 2
    seed: int = 0
    proximal_mu: float = 0.01
    server_learning_rate: float = 0.01
    resume_from: str = ""
    runs_dir: str = "runs"
    heldout_eval: bool = True
    fraction_evaluate: float = 1.0
    round_timeout: float = 3600.0
    wait_for_sites: float = 120.0
    sim_patients: int = 0
    sim_cache_dir: str = ".fedrad-cache"
    privacy: str = "dp"
    noise_multiplier: float = 0.0
    target_epsilon: float = 8.0
    max_grad_norm: float = 1.0
    client_dp: str = "none"
    client_dp_noise: float = 1.0
    client_dp_clip: float = 1.0
    aggregation: str = "secagg+"
    secagg_clipping_range: float = 1.0
    secagg_max_weight: int = 10000
    secagg_threshold: float = 0.6
    max_update_norm: float = 100.0
    trim_fraction: float = 0.2
    faulty_sites: int = 0

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> "RunConfig":
        """Build from Flower's run config (keys use dashes); unknown keys are errors."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        problems: list[str] = []
        for key, value in raw.items():
            name = key.replace("-", "_")
            if name not in fields:
                problems.append(f"unknown setting '{key}': remove it or check its spelling "
                                f"(known: {', '.join(sorted(k.replace('_', '-') for k in fields))})")
                continue
            expected = type(fields[name].default)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if expected is bool and isinstance(value, str) and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                problems.append(f"'{key}' must be of type {expected.__name__}, got a "
                                f"{type(value).__name__}: set it like {key}={fields[name].default!r}")
                continue
            values[name] = value
        if problems:
            raise ConfigError(problems)
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        problems = []
        if self.strategy not in STRATEGIES:
            problems.append(f"unknown strategy '{self.strategy}': choose one of {', '.join(STRATEGIES)}")
        for name, minimum in (("sites", 1), ("rounds", 1), ("local_epochs", 1), ("batch_size", 1),
                              ("image_size", 16), ("min_sites", 1), ("sim_patients", 0)):
            if getattr(self, name) < minimum:
                problems.append(f"'{name.replace('_', '-')}' is {getattr(self, name)} but must be "
                                f">= {minimum}: set a value of at least {minimum}")
        for name in ("learning_rate", "server_learning_rate", "round_timeout", "wait_for_sites"):
            if not getattr(self, name) > 0:
                problems.append(f"'{name.replace('_', '-')}' must be positive: set a value > 0")
        if not is_model_width(self.model_width):
            problems.append(f"'model-width' is {self.model_width} but must be a multiple of 4 from "
                            f"{MODEL_WIDTHS[0]} to {MODEL_WIDTHS[1]} (the channels of the first layer): e.g. "
                            "16 (the default), or 4 or 8 for a smaller model, which loses less to DP noise")
        if not 0 <= self.fraction_evaluate <= 1:
            problems.append("'fraction-evaluate' is the share of sites asked to evaluate each round and must be "
                            "in [0, 1]: e.g. 1.0 (every site), or 0 to skip the sites' evaluation")
        if self.privacy not in PRIVACY_MODES:
            problems.append(f"unknown privacy mode '{self.privacy}': choose 'dp' (DP-SGD at every site) "
                            "or 'none' (non-private, marked as such in every report)")
        if self.noise_multiplier < 0:
            problems.append("'noise-multiplier' must be >= 0: set 0 to let each site derive it from target-epsilon")
        if self.privacy == "dp" and self.noise_multiplier == 0 and not self.target_epsilon > 0:
            problems.append("'target-epsilon' must be positive when 'noise-multiplier' is 0: set a per-run "
                            "epsilon such as 8, or a noise-multiplier")
        if not self.max_grad_norm > 0:
            problems.append("'max-grad-norm' must be positive: a typical value is 1.0")
        if self.client_dp not in CLIENT_DP_MODES:
            problems.append(f"unknown client-dp mode '{self.client_dp}': choose none, fixed (clip each site's "
                            "update, noise at the server) or adaptive (the same with adaptive clipping)")
        if self.client_dp != "none" and not (self.client_dp_noise > 0 and self.client_dp_clip > 0):
            problems.append("'client-dp-noise' and 'client-dp-clip' must be positive with client-dp: e.g. 1.0 and 1.0")
        if self.aggregation not in AGGREGATIONS:
            problems.append(f"unknown aggregation '{self.aggregation}': choose 'secagg+' (the coordinator sees "
                            "only the sum of the sites' updates) or 'plain' (it sees each update)")
        if self.aggregation == "secagg+":
            if self.sites < 2:
                problems.append("aggregation 'secagg+' needs at least 2 sites: raise 'sites' or set aggregation='plain'")
            if self.client_dp != "none":
                problems.append("client-dp needs each site's update at the coordinator, which secagg+ hides: "
                                "set aggregation='plain' to use client-dp, or client-dp='none' (site DP-SGD still applies)")
            if not self.secagg_clipping_range > 0 or self.secagg_max_weight < 1:
                problems.append("'secagg-clipping-range' and 'secagg-max-weight' must be positive: e.g. 1.0 and 10000")
            if not 0 < self.secagg_threshold <= 1:
                problems.append("'secagg-threshold' is the share of a site's neighbours needed to unmask it and must be "
                                "in (0, 1]: e.g. 0.6")
        if self.strategy in ROBUST_STRATEGIES:
            if self.aggregation == "secagg+":
                problems.append(f"strategy '{self.strategy}' is robust aggregation: it needs each site's update, but "
                                "aggregation 'secagg+' shows the coordinator only their sum: set aggregation='plain' "
                                "(the coordinator then sees each site's DP-SGD-protected update), or keep secagg+ with "
                                "strategy fedavg, fedprox or fedadam")
            if self.client_dp != "none":
                problems.append(f"client-dp's noise is calibrated to an average of the sites' clipped updates, and "
                                f"strategy '{self.strategy}' does not average them, so the guarantee would not hold: "
                                "set client-dp='none' or use strategy fedavg, fedprox or fedadam")
        if not 0 <= self.trim_fraction < 0.5:
            problems.append("'trim-fraction' is the share of sites cut at each end of every coordinate by fedtrimmedavg "
                            "and must be in [0, 0.5): e.g. 0.2")
        elif self.strategy == "fedtrimmedavg" and int(self.trim_fraction * self.sites) < 1:
            problems.append(f"fedtrimmedavg with trim-fraction {self.trim_fraction:g} trims nothing with {self.sites} "
                            f"sites: raise 'trim-fraction' to at least 1/{self.sites} (below 0.5)")
        if self.faulty_sites < 0:
            problems.append("'faulty-sites' (the sites krum assumes may send bad updates) must be >= 0: e.g. 1")
        elif self.strategy == "krum" and self.sites < 2 * self.faulty_sites + 3:
            problems.append(f"krum tolerates faulty-sites={self.faulty_sites} only with at least "
                            f"{2 * self.faulty_sites + 3} sites (2 x faulty-sites + 3), not {self.sites}: "
                            "add sites or lower 'faulty-sites'")
        if not self.max_update_norm > 0:
            problems.append("'max-update-norm' bounds the L2 norm of a site's update and must be positive: e.g. 100")
        if self.proximal_mu < 0:
            problems.append("'proximal-mu' must be >= 0: set 0 to disable the proximal term")
        if self.min_sites > self.sites:
            problems.append(f"'min-sites' ({self.min_sites}) exceeds 'sites' ({self.sites}): "
                            "lower min-sites or raise sites")
        if not self.run_name or any(c in self.run_name for c in "/\\") or self.run_name.startswith("."):
            problems.append("'run-name' must be a plain directory name (no slashes, not hidden)")
        if problems:
            raise ConfigError(problems)

    def train_settings(self, server_round: int) -> TrainSettings:
        return TrainSettings(
            server_round=server_round,
            local_epochs=self.local_epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            image_size=self.image_size,
            model_width=self.model_width,
            proximal_mu=self.proximal_mu if self.strategy == "fedprox" else 0.0,
            seed=self.seed,
            rounds=self.rounds,
            privacy=self.privacy,
            noise_multiplier=self.noise_multiplier,
            target_epsilon=self.target_epsilon,
            max_grad_norm=self.max_grad_norm,
            client_dp=self.client_dp,
            max_update_norm=self.max_update_norm,
            secagg_clipping_range=self.secagg_clipping_range,
            secagg_max_weight=self.secagg_max_weight,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}
