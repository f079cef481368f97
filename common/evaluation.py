"""Evaluating a model on labelled images: used by sites and by the coordinator."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from common.metrics import roc_auc, sensitivity_specificity


@dataclass(frozen=True)
class EvalResult:
    loss: float
    auc: float
    sensitivity: float
    specificity: float
    examples: int


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Logits for `images`, in evaluation mode."""
    model.eval()
    outputs = [model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return torch.cat(outputs).numpy() if outputs else np.zeros(0, dtype=np.float32)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> EvalResult:
    """Loss, ROC AUC, and sensitivity/specificity at probability 0.5."""
    if len(images) == 0:
        raise ValueError("the evaluation split is empty: the site needs more labelled patients")
    logits = predict(model, images)
    truth = labels.numpy().astype(np.float32)
    loss = float(F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(truth)))
    probabilities = 1.0 / (1.0 + np.exp(-logits))
    sensitivity, specificity = sensitivity_specificity(truth, probabilities)
    return EvalResult(loss, roc_auc(truth, logits), sensitivity, specificity, len(images))
