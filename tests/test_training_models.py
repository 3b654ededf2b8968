"""Every model: output shape for any size/channel count, every parameter trains (transfer's weights:
test_training_transfer.py)."""

from __future__ import annotations

import pytest
import torch

from muffin_lib.errors import MuffinError
from muffin_lib.training import models


@pytest.mark.parametrize("name", models.MODEL_NAMES)
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_for_any_size(name, channels):
    for size in (32, 64, 128, 256):
        model = models.build_model(name, in_channels=channels, image_size=size).eval()
        with torch.no_grad():
            out = model(torch.randn(1, channels, size, size))
        assert out.shape == (1, 2), (name, channels, size)


def test_odd_size_and_spec():
    model = models.build_model("deeper_cnn", in_channels=1, image_size=75)
    assert model.muffin_spec == {
        "name": "deeper_cnn", "in_channels": 1, "image_size": 75, "num_classes": 2, "pretrained": False
    }
    assert model.eval()(torch.randn(1, 1, 75, 75)).shape == (1, 2)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_every_parameter_gets_a_gradient(name):
    # The reference's ResNet kept its blocks in a tuple: their weights never trained.
    torch.manual_seed(0)
    model = models.build_model(name, in_channels=1, image_size=32)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 32, 32)), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name}.{param_name} gets no gradient"


def test_resnet_like_registers_its_residual_blocks():
    model = models.build_model("resnet_like", in_channels=1, image_size=64)
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("blocks.0.") for n in names)
    assert any(n.startswith("blocks.1.downsample") for n in names)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(MuffinError, match="unknown model 'vgg'"):
        models.build_model("vgg", in_channels=1, image_size=64)
    with pytest.raises(MuffinError, match="at least 32"):
        models.build_model("simple_cnn", in_channels=1, image_size=16)
    with pytest.raises(MuffinError, match="in_channels"):
        models.build_model("simple_cnn", in_channels=2, image_size=64)
    with pytest.raises(MuffinError, match="only for the 'transfer'"):
        models.build_model("simple_cnn", in_channels=1, image_size=64, pretrained=True)
