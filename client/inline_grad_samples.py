"""Per-sample gradients computed inside each layer's own backward: DP-SGD without hooks.

Opacus' hooks mode records every layer's input in a forward hook and computes per-sample
gradients in a full backward hook: Python and autograd bookkeeping per layer and step, a
zero-filled copy of every per-sample gradient (for batches of varying length), the output
gradient multiplied by the batch size, and GroupNorm's normalisation computed again. Here
the layers of the fedrad CNN (Conv2d, GroupNorm, Linear) are swapped, while a site trains,
for ones whose backward computes the input's gradient and each parameter's per-sample
gradients in one go and stores them in ``param.grad_sample``; a deep convolution, whose
output has few positions against its weight, leaves a ``GhostConvGrad`` instead (each
sample's squared norm, and what the clipped sum needs). ``InlineDPOptimizer``, Opacus'
DPOptimizer (``grad_sample_mode="no_op"``) reading both, clips, sums and noises them.

Backpropagate the batch's *summed* loss: what a layer receives for sample i is then the
gradient of sample i's own loss, so its per-sample gradients are what Opacus'
DPOptimizer clips (with ``loss_reduction="mean"`` it divides the noisy sum by the expected
batch size itself), and no per-sample tensor is rescaled. A convolution's come from
fedrad's grouped-convolution sampler (``client.grad_samplers``); GroupNorm's from PyTorch's
own GroupNorm backward, run on the batch as one image with a group per sample and group;
Linear's from an outer product. ``tests/unit/client/test_inline_grad_samples.py`` checks
them against one backward pass per sample.
"""
from __future__ import annotations

import contextlib
import math

import torch
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.nn import functional as F

from client.grad_samplers import conv2d_covered, conv2d_grad_sample, swapped_classes

__all__ = ["GhostConvGrad", "InlineConv2d", "InlineDPOptimizer", "InlineGroupNorm", "InlineLinear", "inline_grad_samples",
           "uncovered_parameters"]


class GhostConvGrad:
    """A convolution weight's per-sample gradients, not materialised ("ghost" clipping).

    Sample n's weight gradient is G_n U_n^T (G_n: its output gradient, out-channels x L
    positions; U_n: its unfolded input, in-channels*kernel x L), so its squared norm is
    sum(U_n^T U_n * G_n^T G_n), two L x L Gram matrices, and the clipped sum over samples is
    the layer's ordinary (summed) weight gradient with each G_n scaled by its clip factor: one
    matrix product over all samples' positions, from the patches kept for the Gram matrix.
    Where L is small against the weight (the deep layers), that is cheaper than writing and
    twice reading N weight-sized tensors (`pays`).
    """

    def __init__(self, layer: nn.Conv2d, x: torch.Tensor, grad_output: torch.Tensor):
        n = x.shape[0]
        self.layer = layer
        self.patches = _patches(layer, x)  # N, L, d (d ordered kernel row, kernel column, channel)
        self.outputs = grad_output.reshape(n, grad_output.shape[1], -1)  # N, p, L
        gram_x = torch.bmm(self.patches, self.patches.transpose(1, 2))
        gram_g = torch.bmm(self.outputs.transpose(1, 2), self.outputs)
        self.squared_norms = torch.linalg.vecdot(gram_x.reshape(n, -1), gram_g.reshape(n, -1))

    @staticmethod
    def pays(layer: nn.Conv2d, grad_output: torch.Tensor) -> bool:
        """Whether the Gram matrices (L^2 (p + d) products) cost less than materialising (L p d)."""
        if layer.groups != 1:
            return False
        positions = math.prod(grad_output.shape[2:])
        per_output = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
        return positions * (layer.out_channels + per_output) < layer.out_channels * per_output

    def materialise(self) -> torch.Tensor:
        """The per-sample gradients (N, *weight.shape)."""
        return self._as_weights(torch.bmm(self.outputs, self.patches))

    def clipped_sum(self, factors: torch.Tensor) -> torch.Tensor:
        """sum_n factors[n] * (sample n's gradient): one matrix product over all samples' positions."""
        p = self.outputs.shape[1]
        scaled = (self.outputs * factors.to(self.outputs.dtype).view(-1, 1, 1)).transpose(0, 1).reshape(p, -1)
        return self._as_weights(scaled @ self.patches.reshape(-1, self.patches.shape[2]))

    def _as_weights(self, grads: torch.Tensor) -> torch.Tensor:
        """(..., p, d) with d in patch order -> (..., p, in-channels, kernel rows, kernel columns)."""
        kh, kw = self.layer.kernel_size
        return grads.view(*grads.shape[:-1], kh, kw, -1).movedim(-1, -3).contiguous()


def _patches(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The layer's input patches, position-major (N, L, kernel * in-channels): the zero-padded
    input laid out channels-last, then one strided copy whose inner runs are whole pixels
    (several times faster here than F.unfold, whose copy runs along the image's rows)."""
    n, c, height, width = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    padded = x.new_zeros((n, height + 2 * ph, width + 2 * pw, c))
    padded[:, ph:ph + height, pw:pw + width] = x.permute(0, 2, 3, 1)
    rows = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    columns = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    s_n, s_row, s_column, _ = padded.stride()
    windows = padded.as_strided((n, rows, columns, kh, kw, c),
                                (s_n, sh * s_row, sw * s_column, dh * s_row, dw * s_column, 1))
    return windows.reshape(n, rows * columns, kh * kw * c)


def _store(param: torch.Tensor, per_sample: torch.Tensor) -> None:
    """Add `per_sample` to `param.grad_sample` (a layer used twice in one pass adds up; a ghost
    left by an earlier use is materialised first)."""
    previous = getattr(param, "grad_sample", None)
    ghost = getattr(param, "ghost_grad_sample", None)
    if ghost is not None:
        del param.ghost_grad_sample
        previous = ghost.materialise() if previous is None else previous + ghost.materialise()
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
        weight = layer.weight
        first_use = getattr(weight, "grad_sample", None) is None and getattr(weight, "ghost_grad_sample", None) is None
        if weight.requires_grad and first_use and GhostConvGrad.pays(layer, grad_output):
            weight.ghost_grad_sample = GhostConvGrad(layer, x, grad_output)
            if layer.bias is not None and layer.bias.requires_grad:
                _store(layer.bias, grad_output.sum(dim=(2, 3)))
        else:
            for param, per_sample in conv2d_grad_sample(layer, [x], grad_output).items():
                _store(param, per_sample)
        return grad_input, None, None, None


class _GroupNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, layer):
        n, c = x.shape[:2]
        out, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, n, c, math.prod(x.shape[2:]),
                                                          layer.num_groups, layer.eps)
        ctx.save_for_backward(x, mean, rstd, weight)
        ctx.layer = layer
        return out

    @staticmethod
    def backward(ctx, grad_output):
        x, mean, rstd, weight = ctx.saved_tensors
        layer = ctx.layer
        n, c = x.shape[:2]
        wants_weight = layer.weight is not None and layer.weight.requires_grad
        wants_bias = layer.bias is not None and layer.bias.requires_grad
        # The batch as one image of n*c channels in n*groups groups has the same groups, statistics
        # and input gradient (the scale repeated n times); its scale and shift gradients are then
        # each sample's own: one native call for all three.
        scales = None if weight is None else weight.expand(n, c).reshape(-1)
        grad_input, per_sample_weight, per_sample_bias = torch.ops.aten.native_group_norm_backward(
            grad_output.reshape(1, n * c, -1), x.reshape(1, n * c, -1), mean.view(1, -1), rstd.view(1, -1), scales,
            1, n * c, math.prod(x.shape[2:]), n * layer.num_groups, [ctx.needs_input_grad[0], wants_weight, wants_bias])
        if wants_weight:
            _store(layer.weight, per_sample_weight.view(n, c))
        if wants_bias:
            _store(layer.bias, per_sample_bias.view(n, c))
        return None if grad_input is None else grad_input.reshape(x.shape), None, None, None


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


class InlineDPOptimizer(DPOptimizer):
    """Opacus' DPOptimizer (flat clipping, noise, scaling, accountant hook) reading what the
    inline layers leave: `param.grad_sample`, or a `param.ghost_grad_sample` (GhostConvGrad)
    whose squared norms enter each sample's norm and whose clipped sum is computed from the
    saved input and output gradient. `as_inline(optimizer)` turns the optimizer Opacus'
    `make_private(grad_sample_mode="no_op")` returns into one."""

    @classmethod
    def as_inline(cls, optimizer: DPOptimizer) -> "InlineDPOptimizer":
        if type(optimizer) is not DPOptimizer:
            raise TypeError(f"inline mode needs Opacus' flat-clipping DPOptimizer, not {type(optimizer).__name__}")
        optimizer.__class__ = cls
        return optimizer  # type: ignore[return-value]

    def clip_and_accumulate(self) -> None:
        params = self.params
        ghosts = [getattr(p, "ghost_grad_sample", None) for p in params]
        flat = [None if g is not None else p.grad_sample.flatten(1) for p, g in zip(params, ghosts)]
        norms = torch.stack([g.squared_norms.sqrt() if g is not None else torch.linalg.vector_norm(f, dim=1)
                             for g, f in zip(ghosts, flat)], dim=1)
        factors = (self.max_grad_norm / (torch.linalg.vector_norm(norms, dim=1) + 1e-6)).clamp(max=1.0)
        for p, ghost, f in zip(params, ghosts, flat):
            grad = ghost.clipped_sum(factors) if ghost is not None else (factors @ f).view_as(p)
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad

    def add_noise(self) -> None:
        """Opacus' noise, the same draws from the same generator (one N(0, (sigma C)^2) tensor per
        parameter, in order), added and divided by the expected batch size in place: Opacus'
        `add_noise` and `scale_grad` in one pass per parameter (`pre_step` calls no `scale_grad`)."""
        if self.secure_mode or self.loss_reduction != "mean":
            super().add_noise()
            self.scale_grad()
            return
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            summed = p.summed_grad
            if std == 0:
                grad = summed.clone()
            else:
                grad = torch.normal(mean=0, std=std, size=summed.shape, generator=self.generator,
                                    dtype=summed.dtype).add_(summed)
            p.grad = grad.div_(self.expected_batch_size).view_as(p)

    @property
    def accumulated_iterations(self) -> int:
        """Backward passes per step: one (a layer's per-sample gradients are one tensor, never a list)."""
        return 1

    def pre_step(self, closure=None) -> bool:
        self.clip_and_accumulate()
        if self._check_skip_next_step():
            self._is_last_step_skipped = True
            return False
        self.add_noise()
        if self.step_hook:
            self.step_hook(self)
        self._is_last_step_skipped = False
        return True

    def zero_grad(self, set_to_none: bool = False) -> None:
        for p in self.params:
            if hasattr(p, "ghost_grad_sample"):
                del p.ghost_grad_sample
        super().zero_grad(set_to_none)
