"""The recipe: ``TrainConfig``, every training setting with its default, its check and its help, and
the key that names a trained result. The one home of the study's training settings."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass

from muffin_lib.config import COLOR_MODES, channels_for
from muffin_lib.errors import MuffinError
from muffin_lib.training import augment
from muffin_lib.training.models import ARCHITECTURE_VERSIONS, MIN_IMAGE_SIZE, MODEL_NAMES
from muffin_lib.training.runtime import AMP_MODES

OPTIMIZERS = ("adamw", "adam", "sgd")
# "all": every layer trains (from scratch, or fine-tuning); "head": a linear probe on frozen features.
TRAIN_LAYERS = ("all", "head")
SCHEDULES = ("onecycle", "cosine", "constant")
# In every trial key and checkpoint check: bump when a model or the training step changes results.
CODE_VERSION = 2
# Not in TrainConfig.key(): speed switches, and amp, whose outcome every key holds through execution_key.
_PERFORMANCE_ONLY_FIELDS = ("channels_last", "compile", "amp")
# Fields added after results were stored: at these defaults they are left out of the key, so the keys of
# every earlier trial and checkpoint stay what they were.
_LATER_FIELDS = {"train_layers": "all"}


def _whole(low: int) -> tuple[str, Callable]:
    return f"a whole number >= {low}", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(test: Callable, text: str) -> tuple[str, Callable]:
    return text, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
        and test(v)


def _one_of(choices) -> tuple[str, Callable]:
    return "one of " + ", ".join(map(str, choices)), lambda v: v in choices


_FLAG = ("true or false", lambda v: isinstance(v, bool))


def setting_choices() -> dict[str, tuple[str, ...]]:
    """The TrainConfig fields that take one of a few names, and those names (the CLI's ``choices``)."""
    return {"model": MODEL_NAMES, "color_mode": COLOR_MODES, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
            "augment": tuple(augment.AUGMENT_PRESETS), "amp": AMP_MODES, "train_layers": TRAIN_LAYERS}


_PATIENCE = _whole(1)
# What each field accepts: (a phrase for the error, the test); other fields take their default's type.
_SETTING_RULES: dict[str, tuple[str, Callable]] = {
    **{name: _one_of(choices) for name, choices in setting_choices().items()},
    "image_size": _whole(MIN_IMAGE_SIZE), "epochs": _whole(1), "batch_size": _whole(2), "seed": _whole(0),
    "lr": _number(lambda v: v > 0, "a number > 0"),
    "weight_decay": _number(lambda v: v >= 0, "a number >= 0"),
    "label_smoothing": _number(lambda v: 0 <= v < 1, "a number from 0 up to (not including) 1"),
    "early_stopping_patience": (f"none or {_PATIENCE[0]}", lambda v: v is None or _PATIENCE[1](v)),
    "channels_last": _FLAG, "compile": _FLAG, "pretrained": _FLAG,
}


def check_setting(name: str, value) -> None:
    """The one check of a setting, whoever sets it: e.g. "epochs: expected a whole number >= 1, got 'abc'"."""
    if name in _SETTING_RULES:
        text, test = _SETTING_RULES[name]
    else:
        default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}[name]
        words = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
        text, test = words.get(type(default), type(default).__name__), lambda v: isinstance(v, type(default))
    if not test(value):
        raise MuffinError(f"{name}: expected {text}, got {value!r}")


# What each setting does, for the ``train`` flags' help (every TrainConfig field is a flag).
SETTING_HELP = {
    "model": "architecture", "image_size": "input size in px (shorter side resized, centre crop)",
    "color_mode": "colour or greyscale input", "epochs": "training epochs",
    "lr": "peak learning rate of the schedule", "batch_size": "images per step", "optimizer": "optimizer",
    "weight_decay": "weight decay (not on biases and BatchNorm)", "schedule": "learning-rate schedule",
    "augment": "augmentation preset", "label_smoothing": "label smoothing of the cross-entropy",
    "early_stopping_patience": "stop after this many epochs without a better validation loss",
    "amp": "precision: auto picks bf16/fp16 where it is faster (see README)", "channels_last":
    "channels-last memory format where it is fast", "compile": "torch.compile the model",
    "seed": "seed of weights, batch order and augmentation",
    "pretrained": "ImageNet weights (model transfer)",
    "train_layers": "all (every layer trains) or head (a linear probe: only the new head, on the frozen "
                    "pretrained network's features computed once; model transfer, augment none)",
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run. ``lr`` is the peak learning rate of the schedule."""

    # The defaults are the study's from-scratch recipe, chosen on the validation split (benchmarks/README.md).
    model: str = "simple_cnn"
    image_size: int = 128
    color_mode: str = "rgb"
    epochs: int = 15
    lr: float = 3e-3
    batch_size: int = 64
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    schedule: str = "onecycle"
    augment: str = "flip_rotate_crop"
    label_smoothing: float = 0.1
    early_stopping_patience: int | None = None
    amp: str = "auto"
    channels_last: bool = True  # where it is fast: not on Apple MPS (runtime.channels_last_for says why)
    compile: bool = False
    seed: int = 0
    pretrained: bool = False
    train_layers: str = "all"

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            check_setting(item.name, getattr(self, item.name))
        if self.pretrained and self.model != "transfer":
            raise MuffinError(f"pretrained: true needs model 'transfer', got model {self.model!r}")
        if self.train_layers == "head" and not self.pretrained:
            raise MuffinError("train_layers: 'head' (a linear probe) needs pretrained features: model "
                              f"'transfer' with pretrained true, got model {self.model!r}, pretrained false")
        if self.train_layers == "head" and self.augment != "none":
            raise MuffinError(f"train_layers: 'head' computes each image's features once, so it cannot "
                              f"augment; set augment 'none' (got {self.augment!r})")

    @property
    def in_channels(self) -> int:
        return channels_for(self.color_mode)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MuffinError(f"unknown TrainConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**values)

    def replace(self, **changes) -> TrainConfig:
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise MuffinError(f"unknown TrainConfig field(s) {unknown}")
        return dataclasses.replace(self, **changes)

    def key(self) -> str:
        """Stable 12-hex-digit hash of the fields that affect results (not channels_last/compile/amp)."""
        relevant = {k: v for k, v in self.to_dict().items() if k not in _PERFORMANCE_ONLY_FIELDS}
        for name, default in _LATER_FIELDS.items():  # a field added later leaves the keys before it alone
            if relevant[name] == default:
                del relevant[name]
        if self.model in ARCHITECTURE_VERSIONS:  # a network replaced under the same name gets new keys
            relevant["architecture"] = ARCHITECTURE_VERSIONS[self.model]
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


# Transfer learning (notebooks 07-08), chosen by twin-grouped CV (benchmarks/README.md, "Transfer recipe by
# CV"). The linear probe: the pretrained network frozen, only a new head trained on its features at its
# native 224 px, computed once.
LINEAR_PROBE = TrainConfig(model="transfer", pretrained=True, train_layers="head", image_size=224, epochs=30,
                           lr=3e-3, augment="none", label_smoothing=0.0)
# Fine-tuning every layer (train_layers="all"): a lower peak lr adapts the pretrained features instead of
# overwriting them, in a few epochs, with plain flips and rotations. It did no better than the probe.
FINE_TUNE = TrainConfig(model="transfer", pretrained=True, image_size=224, epochs=3, lr=3e-4,
                        augment="flip_rotate", label_smoothing=0.0)
# What 07 cross-validates and 08 trains, in every profile: the lowest CV risk, and the cheapest.
TRANSFER_RECIPE = LINEAR_PROBE


def recipe_for(model: str, train_layers: str | None = None) -> TrainConfig:
    """The recipe of ``model``: for the transfer model ``TRANSFER_RECIPE`` (or, asked by ``train_layers``,
    ``LINEAR_PROBE`` / ``FINE_TUNE``), else the from-scratch recipe."""
    if model != TRANSFER_RECIPE.model:
        return TrainConfig()
    return {None: TRANSFER_RECIPE, "head": LINEAR_PROBE, "all": FINE_TUNE}[train_layers]
