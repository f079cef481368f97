"""Round checkpoints in `runs/<run-name>/checkpoints/`: safetensors weights + JSON state.

`round-0003.safetensors` holds the global model after round 3,
`round-0003.strategy.safetensors` the server optimiser's state (if any), and
`round-0003.json` the round number, the run config and the metric history, so that a
new run can resume exactly from it (`--run-config "resume-from='runs/x/checkpoints/round-0003.json'"`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy

from common.weights import load_weights, save_weights, write_json_atomic

FORMAT = "fedrad-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint cannot be used to resume; the message says why and what to do."""


@dataclass(frozen=True)
class Checkpoint:
    server_round: int
    weights: dict[str, torch.Tensor]
    strategy_state: dict[str, np.ndarray]
    history: list[dict]
    config: dict


def save_checkpoint(directory: Path, server_round: int, weights: dict[str, torch.Tensor],
                    strategy_state: dict[str, np.ndarray], history: list[dict], config: dict) -> Path:
    """Write the round's files; the JSON is written last, so it only names complete files."""
    stem = directory / f"round-{server_round:04d}"
    save_weights(stem.with_suffix(".safetensors"), weights, metadata={"round": str(server_round)})
    if strategy_state:
        tmp = stem.with_name(stem.name + ".strategy.safetensors.tmp")
        save_numpy(strategy_state, str(tmp))
        tmp.replace(stem.with_name(stem.name + ".strategy.safetensors"))
    state = {"format": FORMAT, "round": server_round, "weights": stem.name + ".safetensors",
             "strategy_state": stem.name + ".strategy.safetensors" if strategy_state else None,
             "config": config, "history": history}
    write_json_atomic(stem.with_suffix(".json"), state)
    return stem.with_suffix(".json")


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint` (the path of its JSON file)."""
    if not path.is_file():
        raise CheckpointError("resume-from names no checkpoint file: point it at a round-NNNN.json "
                              "in a run's checkpoints/ folder")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError("the checkpoint JSON is not readable: use a round-NNNN.json written by fedrad") from error
    if state.get("format") != FORMAT:
        raise CheckpointError(f"the checkpoint is not in format {FORMAT}: use a checkpoint written by this fedrad version")
    weights = load_weights(path.parent / state["weights"])
    strategy_state = load_numpy(str(path.parent / state["strategy_state"])) if state.get("strategy_state") else {}
    return Checkpoint(int(state["round"]), weights, strategy_state, list(state["history"]), dict(state["config"]))
