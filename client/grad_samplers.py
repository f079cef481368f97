"""Faster per-sample gradients for Opacus' hooks mode, registered in Opacus' own registry.

Opacus computes a convolution's per-sample weight gradients by unfolding the input
(im2col: every input pixel copied kernel-size times) and a batched matrix product. The
per-sample gradients of a batch of N images are also exactly the weight gradient of one
*grouped* convolution over a single image with N times the channels, one group per sample:
sample n's input channels convolved with sample n's weights give sample n's output channels.
`conv2d_grad_sample` asks PyTorch's convolution backward for that weight gradient, without
materialising the unfolded input (over a single input channel, a stem, a depthwise
convolution is faster). Anything it does not cover (strings as padding, non-zero
padding modes, empty batches) goes to Opacus' own sampler, so results never depend on it.

In hooks mode autograd would also compute each convolution's summed weight gradient,
which DP-SGD throws away (the optimizer sums the clipped per-sample gradients instead): a
third to a half of a plain backward pass here. `per_sample_convolutions(model)` swaps the
model's convolutions for `InputGradConv2d` while it trains, whose backward computes the
input's gradient only; its weight gradients come from the hooks alone.

Importing this module registers the sampler for `nn.Conv2d` and `InputGradConv2d`
(process-wide, as Opacus' registry is); `tests/unit/client/test_grad_samplers.py` checks
both against Opacus'.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from opacus.grad_sample import register_grad_sampler
from opacus.grad_sample.conv import compute_conv_grad_sample as opacus_conv_grad_sample
from torch import nn
from torch.nn import functional as F

__all__ = ["InputGradConv2d", "conv2d_covered", "conv2d_grad_sample", "opacus_conv_grad_sample",
           "per_sample_convolutions", "swapped_classes"]


class _InputGradOnly(torch.autograd.Function):
    """conv2d whose backward returns the input's gradient and none for weight and bias."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_output):
        if not ctx.needs_input_grad[0]:
            return (None,) * 7
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        grad_input, _, _ = torch.ops.aten.convolution_backward(
            grad_output, x, weight, None, stride, padding, dilation, False, [0, 0], groups, [True, False, False])
        return (grad_input,) + (None,) * 6


class InputGradConv2d(nn.Conv2d):
    """A Conv2d for hooks-mode DP-SGD: same forward, no summed weight or bias gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"InputGradConv2d takes a batch of images (N, C, H, W), not shape {tuple(x.shape)}")
        return _InputGradOnly.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                    self.groups)


def per_sample_convolutions(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """`model` with every plain Conv2d that `conv2d_grad_sample` covers an InputGradConv2d
    (same parameters), restored on exit."""
    return swapped_classes(model, {m: InputGradConv2d for m in model.modules()
                                   if type(m) is nn.Conv2d and conv2d_covered(m)})


@contextlib.contextmanager
def swapped_classes(model: nn.Module, replacements: dict[nn.Module, type]) -> Iterator[nn.Module]:
    """`model` with each given module's class replaced (a subclass with the same parameters
    and state-dict names), the original classes restored on exit."""
    originals = {module: type(module) for module in replacements}
    for module, kind in replacements.items():
        module.__class__ = kind
    try:
        yield model
    finally:
        for module, kind in originals.items():
            module.__class__ = kind


def conv2d_covered(layer: nn.Conv2d) -> bool:
    """Whether `conv2d_grad_sample` computes this convolution's per-sample gradients itself."""
    return isinstance(layer, nn.Conv2d) and layer.padding_mode == "zeros" and not isinstance(layer.padding, str)


def _covered(layer: nn.Conv2d, activations: torch.Tensor) -> bool:
    return conv2d_covered(layer) and activations.dim() == 4 and activations.shape[0] > 0


def conv2d_grad_sample(layer: nn.Conv2d, activations: list[torch.Tensor],
                       backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients {param: (N, *param.shape)} of a Conv2d, Opacus' signature."""
    x = activations[0]
    if not _covered(layer, x):
        return opacus_conv_grad_sample(layer, activations, backprops)
    x = x.to(backprops.dtype)
    n, weight = x.shape[0], layer.weight
    grads: dict[nn.Parameter, torch.Tensor] = {}
    if weight.requires_grad and layer.in_channels == 1:
        grads[weight] = _single_channel_grad_sample(layer, x, backprops)
    elif weight.requires_grad:
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


def _single_channel_grad_sample(layer: nn.Conv2d, x: torch.Tensor, backprops: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients of a convolution over one input channel (a stem).

    Sample n's gradient at tap t is the correlation of its output gradient with its padded
    image, read from t with the layer's stride as step: a depthwise convolution of the batch
    as one image of N channels, the output gradients as N*out kernels dilated by the stride.
    PyTorch's grouped weight gradient would do an im2col and a small matrix product per sample.
    """
    n, (out_h, out_w) = x.shape[0], backprops.shape[2:]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    height, width = sh * (out_h - 1) + dh * (kh - 1) + 1, sw * (out_w - 1) + dw * (kw - 1) + 1
    padded = F.pad(x, (pw, width - x.shape[3] - pw, ph, height - x.shape[2] - ph))  # a negative pad crops
    kernels = backprops.reshape(n * backprops.shape[1], 1, out_h, out_w)
    grads = F.conv2d(padded.reshape(1, n, height, width), kernels, None, (dh, dw), 0, (sh, sw), n)
    return grads.view(n, backprops.shape[1], 1, kh, kw)


register_grad_sampler([nn.Conv2d, InputGradConv2d])(conv2d_grad_sample)
