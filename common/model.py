"""The fedrad CNN: a small ResNet for single-channel images.

GroupNorm instead of BatchNorm, so that DP-SGD (Opacus) can use the model unchanged:
per-sample gradients need layers whose output for one image does not depend on the
other images of the batch. The network returns one logit per image; `predict_proba`
turns logits into the probability of a finding.
"""
from __future__ import annotations

import torch
from torch import nn

from common.config import MODEL_WIDTHS, is_model_width

DEFAULT_IMAGE_SIZE = 64
MIN_IMAGE_SIZE = 16


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(8, channels // 4), num_channels=channels)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a (projected) identity shortcut."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _norm(out_channels)
        self.act = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                _norm(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class RadiographNet(nn.Module):
    """Stem, three residual stages (each halves the resolution), global pooling, logit."""

    def __init__(self, *, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, stride=2, padding=1, bias=False), _norm(width), nn.ReLU()
        )
        self.stages = nn.Sequential(
            ResidualBlock(width, width * 2, stride=2),
            ResidualBlock(width * 2, width * 4, stride=2),
            ResidualBlock(width * 4, width * 4, stride=2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width * 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 1, S, S) in [0, 1] -> logits (N,)."""
        x = (x - 0.5) * 2.0
        x = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.head(x).squeeze(1)


def build_model(image_size: int = DEFAULT_IMAGE_SIZE, *, width: int = 16, seed: int = 0) -> RadiographNet:
    """A freshly initialised model for square images of `image_size` pixels (seeded)."""
    if not is_model_width(width):
        raise ValueError(f"model width {width} is outside the supported widths (multiples of 4 from "
                         f"{MODEL_WIDTHS[0]} to {MODEL_WIDTHS[1]}); choose model-width 16 (the default), 8 or 4")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image size must be at least {MIN_IMAGE_SIZE} pixels (the network halves the "
            f"resolution four times); choose image-size >= {MIN_IMAGE_SIZE}"
        )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return RadiographNet(width=width)
    finally:
        torch.random.set_rng_state(generator_state)


def predict_proba(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Probability of a finding for each image."""
    return torch.sigmoid(model(images))
