"""Checks on a model update before it is aggregated (or, under SecAgg+, before masking).

A buggy or hostile site can send NaN, a huge update or arrays of the wrong shape; one
such update would spoil the whole federation's model. `update_problems` says what is
wrong with an update measured against the model it started from, so the coordinator can
refuse that site's update and aggregate the rest. Under SecAgg+ the coordinator never
sees a site's update: each site runs the same check on its own update before masking,
and the coordinator runs it on the aggregate.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np


def update_problems(update: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], *,
                    max_norm: float) -> list[str]:
    """Why `update` (new weights) may not be aggregated onto `reference`; [] if it may.

    Checks names, shapes and dtypes against the reference model, that every value is
    finite, and that the L2 norm of the change (update - reference) is at most `max_norm`.
    """
    problems = []
    missing, extra = sorted(set(reference) - set(update)), sorted(set(update) - set(reference))
    if missing or extra:
        problems.append(f"arrays do not match the model: {len(missing)} missing, {len(extra)} unexpected"
                        + (f" (e.g. '{(missing or extra)[0]}')" if missing or extra else ""))
    squared = 0.0
    for name in sorted(set(reference) & set(update)):
        new, old = np.asarray(update[name]), np.asarray(reference[name])
        if new.shape != old.shape:
            problems.append(f"'{name}' has shape {new.shape}, the model has {old.shape}")
            continue
        if new.dtype != old.dtype:
            problems.append(f"'{name}' has dtype {new.dtype}, the model has {old.dtype}")
            continue
        if not np.all(np.isfinite(new)):
            problems.append(f"'{name}' holds non-finite values (NaN or infinity)")
            continue
        squared += float(np.sum(np.square(new.astype(np.float64) - old.astype(np.float64))))
    norm = math.sqrt(squared)
    if not problems and norm > max_norm:
        problems.append(f"the update's L2 norm {norm:.3g} exceeds the run's bound max-update-norm={max_norm:g}")
    return problems

