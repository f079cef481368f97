"""Per-sample gradients computed inside each layer's own backward: DP-SGD without hooks.

Opacus' hooks mode records every layer's input in a forward hook and computes per-sample
gradients in a full backward hook: Python and autograd bookkeeping per layer and step, a
zero-filled copy of every per-sample gradient (for batches of varying length), the output
gradient multiplied by the batch size, and GroupNorm's normalisation computed again. Here
the layers of the fedrad CNN (Conv2d, GroupNorm, Linear) are swapped, while a site trains,
for ones whose backward computes the input's gradient and each parameter's per-sample
gradients in one go and stores them in ``param.grad_sample``, where Opacus' DPOptimizer
(``grad_sample_mode="no_op"``) clips, sums and noises them as in any other mode.

Backpropagate the batch's *summed* loss: what a layer receives for sample i is then the
gradient of sample i's own loss, so its per-sample gradients are what Opacus'
DPOptimizer clips (with ``loss_reduction="mean"`` it divides the noisy sum by the expected
batch size itself), and no per-sample tensor is rescaled. A convolution's come from
fedrad's grouped-convolution sampler (``client.grad_samplers``); GroupNorm's from sums over
each channel of the output gradient and of its product with the input; Linear's from an
outer product. ``tests/unit/client/test_inline_grad_samples.py`` checks them against one
backward pass per sample.
"""
from __future__ import annotations

import contextlib
import torch
from torch import nn
from torch.nn import functional as F

from client.grad_samplers import conv2d_covered, conv2d_grad_sample, swapped_classes

__all__ = ["InlineConv2d", "InlineGroupNorm", "InlineLinear", "inline_grad_samples", "uncovered_parameters"]


def _store(param: torch.Tensor, per_sample: torch.Tensor) -> None:
    """Add `per_sample` to `param.grad_sample` (a layer used twice in one pass adds up)."""
    previous = getattr(param, "grad_sample", None)
    param.grad_sample = per_sample if previous is None else previous + per_sample


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, layer):
        ctx.save_for_backward(x, weight)
        ctx.layer = layer
        return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        layer = ctx.layer
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input, _, _ = torch.ops.aten.convolution_backward(
                grad_output, x, weight, None, layer.stride, layer.padding, layer.dilation, False, [0, 0],
                layer.groups, [True, False, False])
        for param, per_sample in conv2d_grad_sample(layer, [x], grad_output).items():
            _store(param, per_sample)
        return grad_input, None, None, None


class _GroupNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, layer):
        n, c = x.shape[:2]
        out, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, n, c, x[0, 0].numel(),
                                                          layer.num_groups, layer.eps)
        ctx.save_for_backward(x, mean, rstd, weight)
        ctx.layer = layer
        return out

    @staticmethod
    def backward(ctx, grad_output):
        x, mean, rstd, weight = ctx.saved_tensors
        layer = ctx.layer
        n, c = x.shape[:2]
        grad_output = grad_output.contiguous()
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input, _, _ = torch.ops.aten.native_group_norm_backward(
                grad_output, x, mean, rstd, weight, n, c, x[0, 0].numel(), layer.num_groups, [True, False, False])
        g = grad_output.reshape(n, c, -1)
        sum_g = g.sum(dim=2)  # the bias's per-sample gradient
        if layer.weight is not None and layer.weight.requires_grad:
            # d loss / d gamma_c = sum_hw (x - mean_group) * rstd_group * g = rstd (sum x g - mean sum g)
            per_group = c // layer.num_groups
            sum_xg = torch.linalg.vecdot(x.reshape(n, c, -1), g, dim=2)
            mean_c = mean.reshape(n, layer.num_groups, 1).expand(-1, -1, per_group).reshape(n, c)
            rstd_c = rstd.reshape(n, layer.num_groups, 1).expand(-1, -1, per_group).reshape(n, c)
            _store(layer.weight, (sum_xg - mean_c * sum_g).mul_(rstd_c))
        if layer.bias is not None and layer.bias.requires_grad:
            _store(layer.bias, sum_g)
        return grad_input, None, None, None


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, layer):
        ctx.save_for_backward(x, weight)
        ctx.layer = layer
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        layer = ctx.layer
        grad_input = grad_output @ weight if ctx.needs_input_grad[0] else None
        if layer.weight.requires_grad:
            _store(layer.weight, torch.einsum("no,ni->noi", grad_output, x))
        if layer.bias is not None and layer.bias.requires_grad:
            _store(layer.bias, grad_output.clone())
        return grad_input, None, None, None


class InlineConv2d(nn.Conv2d):
    """A Conv2d whose backward stores per-sample gradients (zero padding, batched 4-D input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"InlineConv2d takes a batch of images (N, C, H, W), not shape {tuple(x.shape)}")
        return _Conv.apply(x, self.weight, self.bias, self)


class InlineGroupNorm(nn.GroupNorm):
    """A GroupNorm whose backward stores per-sample gradients of its scale and shift."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(f"InlineGroupNorm takes a non-empty batch (N, C, ...), not shape {tuple(x.shape)}")
        return _GroupNorm.apply(x, self.weight, self.bias, self)


class InlineLinear(nn.Linear):
    """A Linear layer (2-D input) whose backward stores per-sample gradients."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError(f"InlineLinear takes a batch of vectors (N, features), not shape {tuple(x.shape)}")
        return _Linear.apply(x, self.weight, self.bias, self)


_INLINE = {nn.Conv2d: InlineConv2d, nn.GroupNorm: InlineGroupNorm, nn.Linear: InlineLinear}


def _swappable(module: nn.Module) -> bool:
    if type(module) is nn.Conv2d:
        return conv2d_covered(module)
    return type(module) in _INLINE


def uncovered_parameters(model: nn.Module) -> list[str]:
    """Names of trainable parameters that no swappable layer holds (inline mode cannot train them)."""
    covered = {id(p) for m in model.modules() if _swappable(m) for p in m.parameters(recurse=False)}
    return [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in covered]


def inline_grad_samples(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """`model` with its Conv2d, GroupNorm and Linear layers swapped for the Inline ones (same
    parameters and state-dict names), restored on exit. Raises ValueError, before changing
    anything, if a trainable parameter lives in another kind of layer."""
    uncovered = uncovered_parameters(model)
    if uncovered:
        raise ValueError(f"grad-sample mode 'inline' covers Conv2d (zero padding), GroupNorm and Linear "
                         f"layers only; {len(uncovered)} trainable parameter(s) are elsewhere (first: "
                         f"{uncovered[0]}); fix: use grad-sample mode 'hooks'")
    return swapped_classes(model, {m: _INLINE[type(m)] for m in model.modules() if _swappable(m)})
