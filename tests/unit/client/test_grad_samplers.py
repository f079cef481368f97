"""fedrad's Conv2d per-sample gradients equal Opacus' own, layer by layer and through
the whole model under DP-SGD's hooks mode, also with the convolutions that skip autograd's
summed weight gradients."""
from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from opacus.grad_sample import GradSampleHooks
from torch import nn

import client.private_training  # noqa: F401  (registers the sampler, as training does)
from client.grad_samplers import InputGradConv2d, conv2d_grad_sample, opacus_conv_grad_sample, per_sample_convolutions
from common.model import build_model

CONVS = [
    dict(in_channels=1, out_channels=4, kernel_size=3, stride=2, padding=1, bias=False),
    dict(in_channels=1, out_channels=3, kernel_size=(3, 2), stride=(2, 3), padding=(1, 2), dilation=(2, 1)),
    dict(in_channels=1, out_channels=2, kernel_size=4, stride=3),  # the last rows and columns unread
    dict(in_channels=3, out_channels=5, kernel_size=3, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
    dict(in_channels=4, out_channels=8, kernel_size=3, groups=2, padding=2, dilation=2),
    dict(in_channels=6, out_channels=3, kernel_size=1, stride=2),
    dict(in_channels=2, out_channels=3, kernel_size=3, padding="same"),  # Opacus' path
    dict(in_channels=2, out_channels=3, kernel_size=3, padding=1, padding_mode="reflect"),  # Opacus' path
]


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("options", CONVS)
def test_conv2d_per_sample_gradients_equal_opacus(options, batch):
    torch.manual_seed(0)
    layer = nn.Conv2d(**options)
    x = torch.randn(batch, options["in_channels"], 11, 9)
    backprops = torch.randn_like(layer(x))
    ours, theirs = conv2d_grad_sample(layer, [x], backprops), opacus_conv_grad_sample(layer, [x], backprops)
    assert ours.keys() == theirs.keys()
    for param, expected in theirs.items():
        assert ours[param].shape == (batch, *param.shape)
        torch.testing.assert_close(ours[param], expected, rtol=1e-5, atol=1e-5)


def test_empty_batch_goes_to_opacus():
    layer = nn.Conv2d(2, 3, 3)
    grads = conv2d_grad_sample(layer, [torch.zeros(0, 2, 5, 5)], torch.zeros(0, 3, 3, 3))
    assert grads[layer.weight].abs().sum() == 0 and grads[layer.bias].abs().sum() == 0


def test_the_sampler_is_registered_for_hooks_mode():
    assert GradSampleHooks.GRAD_SAMPLERS[nn.Conv2d] is conv2d_grad_sample
    assert GradSampleHooks.GRAD_SAMPLERS[InputGradConv2d] is conv2d_grad_sample


@pytest.mark.parametrize("options", CONVS[:5])
def test_input_grad_conv_gives_the_input_gradient_and_no_weight_gradient(options):
    torch.manual_seed(0)
    layer = nn.Conv2d(**options)
    x = torch.randn(3, options["in_channels"], 11, 9, requires_grad=True)
    grad_output = torch.randn_like(layer(x))
    (expected,) = torch.autograd.grad(layer(x), x, grad_output)
    with per_sample_convolutions(nn.Sequential(layer)):
        assert type(layer) is InputGradConv2d
        out = layer(x)
        torch.testing.assert_close(out, nn.functional.conv2d(x, layer.weight, layer.bias, layer.stride,
                                                             layer.padding, layer.dilation, layer.groups))
        out.backward(grad_output)
    assert type(layer) is nn.Conv2d  # restored
    torch.testing.assert_close(x.grad, expected)
    assert layer.weight.grad is None and (layer.bias is None or layer.bias.grad is None)


def test_only_covered_convolutions_are_swapped():
    covered, same, reflect = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding="same"), \
        nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
    with per_sample_convolutions(nn.Sequential(covered, same, reflect)):
        assert [type(m) for m in (covered, same, reflect)] == [InputGradConv2d, nn.Conv2d, nn.Conv2d]


def _model_grad_samples(conv_sampler, *, input_grad_only: bool = False) -> list[torch.Tensor]:
    saved = GradSampleHooks.GRAD_SAMPLERS[nn.Conv2d]
    GradSampleHooks.GRAD_SAMPLERS[nn.Conv2d] = conv_sampler
    try:
        network = build_model(32)
        if input_grad_only:
            for module in network.modules():
                if type(module) is nn.Conv2d:
                    module.__class__ = InputGradConv2d
        model = GradSampleModule(network, batch_first=True, loss_reduction="mean")
        images = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(1))
        targets = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
        nn.functional.binary_cross_entropy_with_logits(model(images), targets).backward()
        grads = [p.grad_sample.clone() for p in model.parameters()]
        model._close()
        return grads
    finally:
        GradSampleHooks.GRAD_SAMPLERS[nn.Conv2d] = saved


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("input_grad_only", [False, True])
def test_whole_model_per_sample_gradients_equal_opacus(input_grad_only):
    theirs = _model_grad_samples(opacus_conv_grad_sample)
    ours = _model_grad_samples(conv2d_grad_sample, input_grad_only=input_grad_only)
    assert len(ours) == len(theirs)
    for mine, expected in zip(ours, theirs):
        torch.testing.assert_close(mine, expected, rtol=1e-4, atol=1e-6)
