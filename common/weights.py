"""Model weights as safetensors files and Flower ArrayRecords (never pickle)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from flwr.app import ArrayRecord
from safetensors.torch import load_file, save_file


def to_record(model: torch.nn.Module) -> ArrayRecord:
    """The model's state dict as an ArrayRecord (plain names, no wrapper prefixes)."""
    return ArrayRecord(plain_state_dict(model))


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict of the underlying module, detached, without Opacus' `_module.` prefixes."""
    module = getattr(model, "_module", model)
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def load_record(model: torch.nn.Module, record: ArrayRecord) -> None:
    """Load an ArrayRecord into `model`; shapes and names must match exactly."""
    module = getattr(model, "_module", model)
    module.load_state_dict(record.to_torch_state_dict(), strict=True)


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def write_json_atomic(path: Path, payload: object) -> None:
    """Write JSON atomically: temp file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
