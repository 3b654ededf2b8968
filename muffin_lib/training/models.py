"""The four classifiers of the study and ``build_model``, the one way to make them.

The first three follow the reference notebook's layer stacks with its bugs fixed (see the comments);
``transfer`` is torchvision's ResNet-18 with a new 2-class head. Every model accepts any square image
of at least 32 px with 1 (greyscale) or 3 (RGB) channels: flatten sizes come from a dummy forward pass.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18
from torchvision.models.resnet import BasicBlock

from muffin_lib.errors import MuffinError
from muffin_lib.text import plural

log = logging.getLogger(__name__)

MODEL_NAMES: tuple[str, ...] = ("simple_cnn", "deeper_cnn", "resnet_like", "transfer")
MIN_IMAGE_SIZE = 32
# ImageNet statistics of the pretrained ResNet-18; greyscale input uses their channel average.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _flat_features(features: nn.Module, in_channels: int, image_size: int) -> int:
    """Length of ``features``' output for one image, found by running it once."""
    with torch.no_grad():
        was_training = features.training
        features.eval()  # BatchNorm refuses a batch of one in training mode
        out = features(torch.zeros(1, in_channels, image_size, image_size))
        features.train(was_training)
    return out.numel()


class SimpleCNN(nn.Module):
    """Three conv(3x3)-ReLU-maxpool stages (16, 32, 64 channels), fc 512, fc num_classes (2: chihuahua, muffin)."""

    def __init__(self, in_channels: int = 1, image_size: int = 128, num_classes: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for width in (16, 32, 64):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(_flat_features(self.features, in_channels, image_size), 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DeeperCNN(nn.Module):
    """Four conv stages (32, 64, 128, 256) with BatchNorm after the middle two, fc 1024 + dropout, fc num_classes.

    The layer order is the reference's (conv -> ReLU -> BN -> pool in the middle stages). The reference
    had no ReLU after conv 32 and conv 256, so those convs were linear maps straight into a max-pool;
    a ReLU is added there, and after fc 1024, whose output otherwise fed fc 2 linearly.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 128, num_classes: int = 2):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(64),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(128),
            nn.MaxPool2d(2),
            nn.Conv2d(128, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(_flat_features(self.features, in_channels, image_size), 1024),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(1024, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ResNetLike(nn.Module):
    """ResNet stem (7x7/2 conv 64, BN, ReLU, 3x3/2 max-pool), blocks 64->64 and 64->128 (stride 2),
    global average pool, dropout 0.3, fc num_classes.

    The reference kept its residual blocks in a plain tuple, so PyTorch never registered their
    parameters: the optimizer skipped them and they stayed at their random initialisation. Here
    they live in an ``nn.Sequential``. The blocks are torchvision's own ``BasicBlock``.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 128, num_classes: int = 2):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        projection = nn.Sequential(nn.Conv2d(64, 128, 1, stride=2, bias=False), nn.BatchNorm2d(128))
        self.blocks = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 128, stride=2, downsample=projection))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.3)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x))).flatten(1)
        return self.fc(self.dropout(x))


class TransferNet(nn.Module):
    """torchvision ResNet-18 with a new ``num_classes`` head; greyscale input is repeated to 3 channels
    so the (pretrained) first convolution sees the input it was trained on."""

    def __init__(self, in_channels: int = 1, image_size: int = 128, num_classes: int = 2, pretrained: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.backbone = resnet18(weights=None)
        if pretrained:
            self.backbone.load_state_dict(load_pretrained_state_dict())
        self.backbone.fc = nn.Linear(self.backbone.fc.in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.backbone(x)


def load_pretrained_state_dict(progress: bool = True) -> dict[str, torch.Tensor]:
    """ImageNet weights of ResNet-18 from torch hub's cache, downloading them if needed."""
    weights = ResNet18_Weights.IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=progress, check_hash=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad hash is a RuntimeError
        cache_dir = f"{torch.hub.get_dir()}/checkpoints"
        file_name = weights.url.rsplit("/", 1)[-1]
        raise MuffinError(
            f"could not get the pretrained ResNet-18 weights ({error}). Either train from random "
            f"initialisation with pretrained=False (CLI: --pretrained false), or download {weights.url} "
            f"on a machine with internet access and place it as {cache_dir}/{file_name}"
        ) from error


def try_pretrained(pretrained: bool) -> tuple[bool, str | None]:
    """``(use the ImageNet weights, why not)`` for the transfer model: ``(True, None)`` when ``pretrained``
    is asked for and the weights load (downloaded once, then from torch hub's cache); ``(False, the
    reason)`` when they cannot be had; ``(False, None)`` when not asked for."""
    if not pretrained:
        return False, None
    try:
        load_pretrained_state_dict(progress=False)
    except MuffinError as error:
        return False, str(error)
    return True, None


def build_model(
    name: str, *, in_channels: int, image_size: int, num_classes: int = 2, pretrained: bool = False
) -> nn.Module:
    """Make model ``name`` (one of ``MODEL_NAMES``) for ``in_channels`` x ``image_size`` x ``image_size`` input.

    The returned module carries ``muffin_spec`` (name, in_channels, image_size, num_classes, pretrained),
    which the engine uses to check inputs and checkpoints use to rebuild it.
    """
    if name not in MODEL_NAMES:
        raise MuffinError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if in_channels not in (1, 3):
        raise MuffinError(f"in_channels must be 1 (grayscale) or 3 (rgb), got {in_channels}")
    if image_size < MIN_IMAGE_SIZE:
        raise MuffinError(f"image_size must be at least {MIN_IMAGE_SIZE} px for {name}, got {image_size}")
    if pretrained and name != "transfer":
        raise MuffinError(f"pretrained weights exist only for the 'transfer' model, not {name!r}")
    if name == "transfer":
        model: nn.Module = TransferNet(in_channels, image_size, num_classes, pretrained=pretrained)
    else:
        model_class = {"simple_cnn": SimpleCNN, "deeper_cnn": DeeperCNN, "resnet_like": ResNetLike}[name]
        model = model_class(in_channels, image_size, num_classes)
    model.muffin_spec = {
        "name": name,
        "in_channels": in_channels,
        "image_size": image_size,
        "num_classes": num_classes,
        "pretrained": pretrained,
    }
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(name: str, in_channels: int, image_size: int) -> str:
    """One sentence a notebook shows under the printed network: its size for this input."""
    model = build_model(name, in_channels=in_channels, image_size=image_size)
    mode = "greyscale" if in_channels == 1 else "RGB"
    return (f"`{name}` has **{count_parameters(model):,}** trainable parameters for {image_size} px {mode} input "
            f"({plural(in_channels, 'channel')}).")
