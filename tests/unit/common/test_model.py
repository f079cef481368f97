import pytest
import torch
from opacus.validators import ModuleValidator

from common.model import build_model, predict_proba


@pytest.mark.parametrize("size", [16, 32, 64, 96])
def test_one_logit_per_image_at_any_input_size(size):
    model = build_model(size)
    logits = model(torch.rand(3, 1, size, size))
    assert logits.shape == (3,)
    probabilities = predict_proba(model, torch.rand(2, 1, size, size))
    assert torch.all((probabilities > 0) & (probabilities < 1))


def test_no_batchnorm_and_opacus_accepts_it():
    model = build_model(64)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert ModuleValidator.validate(model, strict=False) == []


def test_output_of_one_image_does_not_depend_on_the_batch():
    model = build_model(32).eval()
    images = torch.rand(4, 1, 32, 32)
    alone = model(images[:1])
    together = model(images)[:1]
    assert torch.allclose(alone, together, atol=1e-5)


def test_initialisation_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(32, seed=7)
    after = torch.rand(1)
    b = build_model(32, seed=7)
    c = build_model(32, seed=8)
    assert torch.equal(before, after)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_too_small_image_size_is_refused():
    with pytest.raises(ValueError, match="image-size"):
        build_model(8)


@pytest.mark.parametrize("width", [0, 6, 36])
def test_unsupported_widths_are_refused(width):
    with pytest.raises(ValueError, match="model-width 16"):
        build_model(32, width=width)


def test_every_supported_width_builds_and_predicts():
    for width in range(4, 33, 4):
        assert build_model(16, width=width)(torch.zeros(2, 1, 16, 16)).shape == (2,)


def test_model_learns_a_simple_pattern():
    torch.manual_seed(0)
    images = torch.rand(64, 1, 32, 32) * 0.2
    labels = torch.arange(64) % 2
    images[labels == 1, :, 10:20, 10:20] += 0.6
    model = build_model(32)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images), labels.float())
        loss.backward()
        optimizer.step()
    assert ((model(images) > 0).long() == labels).float().mean() > 0.95
