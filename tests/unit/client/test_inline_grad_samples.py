"""Inline per-sample gradients equal each sample's own gradient (one backward per sample),
layer by layer and through the fedrad CNN, materialised or as ghost norms and clipped sums;
input gradients are a plain layer's; the inline optimizer clips as Opacus' does."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping

from client.inline_grad_samples import (GhostConvGrad, InlineConv2d, InlineDPOptimizer, inline_grad_samples,
                                        uncovered_parameters)
from common.model import build_model

LAYERS = [
    lambda: nn.Conv2d(1, 4, 3, stride=2, padding=1, bias=False),
    lambda: nn.Conv2d(3, 5, 3, padding=1),
    lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
    lambda: nn.Conv2d(4, 8, 3, groups=2, padding=2, dilation=2),
    lambda: nn.Conv2d(6, 3, 1, stride=2),
    lambda: nn.GroupNorm(2, 4),
    lambda: nn.GroupNorm(3, 6, affine=False),
    lambda: nn.Linear(7, 3),
    lambda: nn.Linear(7, 2, bias=False),
]


def _input_for(layer: nn.Module, batch: int) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return torch.randn(batch, layer.in_features)
    channels = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.num_channels
    return torch.randn(batch, channels, 11, 9)


def _own_gradients(model: nn.Module, x: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each sample's gradient of its own loss (weights . output), one backward per sample."""
    per_sample: dict[str, list[torch.Tensor]] = {name: [] for name, _ in model.named_parameters()}
    for i in range(len(x)):
        model.zero_grad()
        (model(x[i:i + 1].clone().requires_grad_(True)) * weights[i:i + 1]).sum().backward()
        for name, p in model.named_parameters():
            per_sample[name].append(p.grad.detach().clone())
    return {name: torch.stack(grads) for name, grads in per_sample.items()}


def _inline_gradients(model: nn.Module, x: torch.Tensor, weights: torch.Tensor, ghosts: list | None = None):
    """Each parameter's per-sample gradients from one inline backward pass (a ghost's
    materialised, after checking its squared norms against them; `ghosts` collects their names)."""
    x = x.clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    with inline_grad_samples(model):
        (model(x) * weights).sum().backward()  # the summed loss, as training backpropagates it
    grads = {}
    for name, p in model.named_parameters():
        ghost = getattr(p, "ghost_grad_sample", None)
        if ghost is None:
            grads[name] = p.grad_sample
            del p.grad_sample
        else:
            assert getattr(p, "grad_sample", None) is None
            grads[name] = ghost.materialise()
            torch.testing.assert_close(ghost.squared_norms, grads[name].flatten(1).square().sum(1), rtol=1e-4, atol=1e-6)
            del p.ghost_grad_sample
            if ghosts is not None:
                ghosts.append(name)
        assert p.grad is None  # no summed gradient is computed
    return grads, x.grad


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("make", LAYERS)
def test_each_layer_gives_every_sample_its_own_gradient(make, batch):
    torch.manual_seed(0)
    layer = make()
    x = _input_for(layer, batch)
    weights = torch.randn_like(layer(x))
    expected = _own_gradients(layer, x, weights)
    plain_x = x.clone().requires_grad_(True)
    (layer(plain_x) * weights).sum().backward()
    ours, input_grad = _inline_gradients(layer, x, weights)
    assert ours.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(ours[name], grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(input_grad, plain_x.grad, rtol=1e-4, atol=1e-5)


def test_the_fedrad_cnn_and_a_layer_used_twice():
    torch.manual_seed(1)
    model = build_model(32, width=4)
    x, weights = torch.rand(4, 1, 32, 32), torch.randn(4)
    expected = _own_gradients(model, x, weights)
    ghosts: list[str] = []
    ours, _ = _inline_gradients(model, x, weights, ghosts)
    for name, grad in expected.items():
        torch.testing.assert_close(ours[name], grad, rtol=1e-3, atol=1e-5)
    # the last stage's convolutions (2 x 2 positions against 16 x 144 weights) are ghosts
    assert ghosts == ["stages.2.conv1.weight", "stages.2.conv2.weight", "stages.2.shortcut.0.weight"]
    for shared, x in ((nn.Linear(3, 3), torch.randn(3, 3)),
                      (nn.Conv2d(16, 16, 3, padding=1), torch.randn(3, 16, 2, 2))):  # a ghost, then not
        twice = nn.Sequential(shared, nn.Tanh(), shared)
        weights = torch.randn_like(twice(x))
        expected = _own_gradients(twice, x, weights)
        ghosts = []
        ours, _ = _inline_gradients(twice, x, weights, ghosts)
        assert ghosts == []  # a second use materialises the first use's ghost and adds up
        for name, grad in expected.items():
            torch.testing.assert_close(ours[name], grad, rtol=1e-4, atol=1e-5)


GHOST_LAYERS = [  # (layer, input): few output positions against a large weight
    (lambda: nn.Conv2d(32, 24, 3, padding=1), (6, 32, 4, 4)),
    (lambda: nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), (6, 32, 8, 8)),
    (lambda: nn.Conv2d(16, 40, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)), (6, 16, 5, 6)),
    (lambda: nn.Conv2d(64, 64, 1, stride=2, bias=False), (6, 64, 8, 8)),
]


@pytest.mark.parametrize("make, shape", GHOST_LAYERS)
def test_ghost_norms_and_clipped_sums_equal_the_materialised_ones(make, shape):
    torch.manual_seed(2)
    layer = make()
    x = torch.randn(shape)
    weights = torch.randn_like(layer(x))
    expected = _own_gradients(layer, x, weights)["weight"]
    assert GhostConvGrad.pays(layer, weights)
    ghost = GhostConvGrad(layer, x, weights)
    torch.testing.assert_close(ghost.squared_norms, expected.flatten(1).square().sum(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ghost.materialise(), expected, rtol=1e-4, atol=1e-5)
    factors = torch.rand(len(x))
    torch.testing.assert_close(ghost.clipped_sum(factors), torch.einsum("i,i...", factors, expected),
                               rtol=1e-4, atol=1e-5)


def test_ghosts_only_where_they_pay():
    big, wide = nn.Conv2d(64, 64, 3, padding=1), torch.zeros(2, 64, 8, 8)
    assert GhostConvGrad.pays(big, torch.zeros(2, 64, 4, 4))  # 16 positions x (64 + 576) < 64 x 576
    assert not GhostConvGrad.pays(big, wide)  # 64 positions: the Gram matrices cost more
    assert not GhostConvGrad.pays(nn.Conv2d(64, 64, 3, padding=1, groups=2), torch.zeros(2, 64, 4, 4))
    assert not GhostConvGrad.pays(nn.Conv2d(1, 16, 3, stride=2, padding=1), torch.zeros(2, 16, 32, 32))  # a stem


def test_the_inline_optimizer_clips_and_sums_as_opacus_does():
    """Same per-sample gradients, same noise generator: InlineDPOptimizer (with ghosts) and
    Opacus' DPOptimizer (materialised, from one backward per sample) give the same clipped
    sum and the same noisy, scaled gradient."""
    torch.manual_seed(3)
    model = build_model(32, width=4)
    x, weights = torch.rand(5, 1, 32, 32), torch.randn(5)
    per_sample = _own_gradients(model, x, weights)

    def optimizer(kind):
        adam = torch.optim.Adam(model.parameters())
        return kind(adam, noise_multiplier=0.3, max_grad_norm=0.05, expected_batch_size=5,
                    generator=torch.Generator().manual_seed(4))

    reference = optimizer(DPOptimizer)
    for name, p in model.named_parameters():
        p.grad_sample = per_sample[name]
    assert reference.pre_step()
    expected = {name: p.summed_grad for name, p in model.named_parameters()}
    noisy = {name: p.grad for name, p in model.named_parameters()}
    reference.zero_grad(set_to_none=True)

    inline = InlineDPOptimizer.as_inline(optimizer(DPOptimizer))
    with inline_grad_samples(model):
        (model(x) * weights).sum().backward()
    assert any(getattr(p, "ghost_grad_sample", None) is not None for p in model.parameters())
    assert inline.pre_step()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.summed_grad, expected[name], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(p.grad, noisy[name], rtol=1e-4, atol=1e-6)
    noise = torch.cat([(noisy[name] - expected[name] / 5).flatten() for name in noisy])
    assert noise.std() == pytest.approx(0.3 * 0.05 / 5, rel=0.05)  # the noise is there: sigma C / batch
    inline.zero_grad(set_to_none=True)
    assert not any(hasattr(p, "ghost_grad_sample") for p in model.parameters())
    with pytest.raises(TypeError, match="flat-clipping DPOptimizer"):
        InlineDPOptimizer.as_inline(optimizer(DPOptimizerFastGradientClipping))


def test_layers_are_restored_and_keep_their_parameters():
    model = build_model(32, width=4)
    kinds = [type(m) for m in model.modules()]
    names = list(model.state_dict())
    with inline_grad_samples(model):
        assert any(type(m) is InlineConv2d for m in model.modules())
        assert list(model.state_dict()) == names
    assert [type(m) for m in model.modules()] == kinds


def test_a_model_with_other_trainable_layers_is_refused_unchanged():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv1d(2, 2, 1))
    assert uncovered_parameters(model) == ["1.weight", "1.bias"]
    with pytest.raises(ValueError, match="grad-sample mode 'hooks'"):
        with inline_grad_samples(model):
            pass
    assert type(model[0]) is nn.Conv2d
