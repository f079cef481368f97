"""Faster per-sample gradients for Opacus' hooks mode, registered in Opacus' own registry.

Opacus computes a convolution's per-sample weight gradients by unfolding the input
(im2col: every input pixel copied kernel-size times) and a batched matrix product. The
per-sample gradients of a batch of N images are also exactly the weight gradient of one
*grouped* convolution over a single image with N times the channels, one group per sample:
sample n's input channels convolved with sample n's weights give sample n's output channels.
`conv2d_grad_sample` asks PyTorch's convolution backward for that weight gradient, without
materialising the unfolded input. Anything it does not cover (strings as padding, non-zero
padding modes, empty batches) goes to Opacus' own sampler, so results never depend on it.

Importing this module registers the sampler for `nn.Conv2d` (process-wide, as Opacus'
registry is); `tests/unit/client/test_grad_samplers.py` checks it against Opacus'.
"""
from __future__ import annotations

import torch
from opacus.grad_sample import register_grad_sampler
from opacus.grad_sample.conv import compute_conv_grad_sample as opacus_conv_grad_sample
from torch import nn

__all__ = ["conv2d_grad_sample", "opacus_conv_grad_sample"]


def _covered(layer: nn.Conv2d, activations: torch.Tensor) -> bool:
    return (type(layer) is nn.Conv2d and layer.padding_mode == "zeros" and not isinstance(layer.padding, str)
            and activations.dim() == 4 and activations.shape[0] > 0)


def conv2d_grad_sample(layer: nn.Conv2d, activations: list[torch.Tensor],
                       backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients {param: (N, *param.shape)} of a Conv2d, Opacus' signature."""
    x = activations[0]
    if not _covered(layer, x):
        return opacus_conv_grad_sample(layer, activations, backprops)
    x = x.to(backprops.dtype)
    n, weight = x.shape[0], layer.weight
    grads: dict[nn.Parameter, torch.Tensor] = {}
    if weight.requires_grad:
        # Only the weight's shape matters to the weight gradient; its values are never read.
        stacked = weight.new_empty((n * weight.shape[0], *weight.shape[1:]))
        _, per_sample, _ = torch.ops.aten.convolution_backward(
            backprops.reshape(1, -1, *backprops.shape[2:]), x.reshape(1, -1, *x.shape[2:]), stacked,
            None, layer.stride, layer.padding, layer.dilation, False, [0, 0], n * layer.groups,
            [False, True, False])
        grads[weight] = per_sample.view(n, *weight.shape)
    if layer.bias is not None and layer.bias.requires_grad:
        grads[layer.bias] = backprops.sum(dim=(2, 3))
    return grads


register_grad_sampler(nn.Conv2d)(conv2d_grad_sample)
