"""Local training and evaluation: plain PyTorch, no Flower."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from client.allocator import keep_freed_memory
from common.config import TrainSettings


@dataclass(frozen=True)
class TrainResult:
    loss: float
    examples: int
    steps: int
    seconds: float


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    *,
    seed: int,
) -> TrainResult:
    """Train for `settings.local_epochs` epochs of shuffled mini-batches (Adam).

    With `settings.proximal_mu > 0` the FedProx term mu/2 * ||w - w_global||^2 is added,
    w_global being the weights the model holds when this function is called.
    """
    if len(images) == 0:
        raise ValueError("the training split is empty: ingest labelled images into the site store")
    keep_freed_memory()
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    anchor = [p.detach().clone() for p in model.parameters()] if settings.proximal_mu > 0 else None
    targets = labels.float()
    model.train()
    total_loss, total_seen, steps = 0.0, 0, 0
    for _ in range(settings.local_epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = F.binary_cross_entropy_with_logits(model(images[batch]), targets[batch])
            objective = loss
            if anchor is not None:
                drift = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
                objective = loss + settings.proximal_mu / 2.0 * drift
            objective.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
            total_seen += len(batch)
            steps += 1
    return TrainResult(
        loss=total_loss / max(total_seen, 1),
        examples=len(images),
        steps=steps,
        seconds=time.perf_counter() - started,
    )
