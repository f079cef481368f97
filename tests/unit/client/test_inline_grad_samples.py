"""Inline per-sample gradients equal each sample's own gradient (one backward per sample),
layer by layer and through the fedrad CNN; input gradients are a plain layer's."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from client.inline_grad_samples import InlineConv2d, inline_grad_samples, uncovered_parameters
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


def _inline_gradients(model: nn.Module, x: torch.Tensor, weights: torch.Tensor):
    x = x.clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    with inline_grad_samples(model):
        (model(x) * weights).sum().backward()  # the summed loss, as training backpropagates it
    grads = {name: p.grad_sample for name, p in model.named_parameters()}
    for p in model.parameters():
        del p.grad_sample
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
    ours, _ = _inline_gradients(model, x, weights)
    for name, grad in expected.items():
        torch.testing.assert_close(ours[name], grad, rtol=1e-3, atol=1e-5)
    shared = nn.Linear(3, 3)
    twice = nn.Sequential(shared, nn.Tanh(), shared)
    x, weights = torch.randn(3, 3), torch.randn(3, 3)
    expected = _own_gradients(twice, x, weights)
    ours, _ = _inline_gradients(twice, x, weights)
    for name, grad in expected.items():
        torch.testing.assert_close(ours[name], grad, rtol=1e-4, atol=1e-5)


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
