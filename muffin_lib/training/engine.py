"""Training and evaluation of one model on in-memory uint8 images: the one loop every notebook,
the ``train`` CLI and cross-validation share.

Images arrive decoded once (``cache.load_images``) as a uint8 N x C x H x W tensor. Each step draws a
seeded random batch, moves it to the device, converts, normalises and augments it there
(``augment.augment_batch``), and runs the model under autocast where that pays. No DataLoader, no
PIL, no per-sample Python in the loop.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from muffin_lib.config import CLASSES, COLOR_MODES, channels_for
from muffin_lib.errors import MuffinError
from muffin_lib.progress import progress_bar
from muffin_lib.training import augment, runtime
from muffin_lib.training.checkpoints import (  # noqa: F401
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    load_checkpoint,
    save_checkpoint,
)
from muffin_lib.training.models import ARCHITECTURE_VERSIONS, MIN_IMAGE_SIZE, MODEL_NAMES, build_model
from muffin_lib.training.runtime import AMP_MODES, execution_key, resolve_amp  # noqa: F401  (engine.* for callers)
from muffin_lib.training.step import (  # noqa: F401  (engine.* for callers: fit's loop is built from these parts)
    TrainStep,
    batch_starts,
    epoch_batches,
    make_optimizer,
    make_schedule,
    steps_per_epoch,
)
from muffin_lib.training.tensors import (  # noqa: F401  (engine.* for callers)
    GPU_RESIDENT_FRACTION,
    Normalizer,
    check_images,
    check_labels,
    compute_normalization,
    model_spec,
    place_images,
    pretrained_normalization,
    take_batch,
    uses_channels_last,
)

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
# Part of every trial key and checkpoint-reuse check (with imageio.PREPROCESS_VERSION and execution_key):
# bump when an architecture in models.py or the training step changes results.
CODE_VERSION = 2
# Fields left out of TrainConfig.key(): channels_last and compile change speed, not what is learnt; amp is a
# request ("auto" or explicit) whose outcome, the precision really used, is in every key already through
# execution_key, so "auto" and "bf16" runs that both train in bf16 share their results.
_PERFORMANCE_ONLY_FIELDS = ("channels_last", "compile", "amp")


def _whole(low: int) -> tuple[str, Callable]:
    return f"a whole number >= {low}", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(test: Callable, text: str) -> tuple[str, Callable]:
    return text, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and test(v)


def _one_of(choices) -> tuple[str, Callable]:
    return "one of " + ", ".join(map(str, choices)), lambda v: v in choices


_FLAG = ("true or false", lambda v: isinstance(v, bool))


def setting_choices() -> dict[str, tuple[str, ...]]:
    """The TrainConfig fields that take one of a few names, and those names (the CLI's ``choices``)."""
    return {"model": MODEL_NAMES, "color_mode": COLOR_MODES, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
            "augment": tuple(augment.AUGMENT_PRESETS), "amp": AMP_MODES}


_PATIENCE = _whole(1)
# What each TrainConfig field accepts: (a phrase for the error, the test); a field without a rule here must be
# of its default's type.
_SETTING_RULES: dict[str, tuple[str, Callable]] = {
    **{name: _one_of(choices) for name, choices in setting_choices().items()},
    "image_size": _whole(MIN_IMAGE_SIZE), "epochs": _whole(1), "batch_size": _whole(2), "seed": _whole(0),
    "lr": _number(lambda v: v > 0, "a number > 0"), "weight_decay": _number(lambda v: v >= 0, "a number >= 0"),
    "label_smoothing": _number(lambda v: 0 <= v < 1, "a number from 0 up to (not including) 1"),
    "early_stopping_patience": (f"none or {_PATIENCE[0]}", lambda v: v is None or _PATIENCE[1](v)),
    "channels_last": _FLAG, "compile": _FLAG, "pretrained": _FLAG,
}


def check_setting(name: str, value) -> None:
    """The one check of a training setting, whoever sets it (TrainConfig, ``-p`` of ``run``, ``train``'s
    flags): a MuffinError that names the setting as the user types it, e.g. "epochs: expected a whole number
    >= 1, got 'abc'"; callers prefix it with the flag (``-p`` or ``--``)."""
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
    "seed": "seed of weights, batch order and augmentation", "pretrained": "ImageNet weights (model transfer)",
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run. ``lr`` is the peak learning rate of the schedule."""

    # The defaults are the study's from-scratch recipe, the one home of these settings: the `train` CLI
    # and the training notebooks read them (tests check). Measured on the twin-grouped validation split of
    # the dev data (benchmarks/README.md, "recipe"): deeper_cnn 7.1 % validation error against 10.0 %
    # for the earlier 128 px greyscale, 10-epoch, lr 1e-3 defaults.
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

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            check_setting(item.name, getattr(self, item.name))
        if self.pretrained and self.model != "transfer":
            raise MuffinError(f"pretrained: true needs model 'transfer', got model {self.model!r}")

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
        if self.model in ARCHITECTURE_VERSIONS:  # a network replaced under the same name gets new keys
            relevant["architecture"] = ARCHITECTURE_VERSIONS[self.model]
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


# Transfer learning (notebook 08): a lower peak lr adapts the pretrained features instead of overwriting
# them, in a few epochs, with plain flips and rotations; every other setting is the from-scratch recipe's.
TRANSFER_RECIPE = TrainConfig(model="transfer", pretrained=True, epochs=6, lr=3e-4, augment="flip_rotate",
                              label_smoothing=0.0)


def recipe_for(model: str) -> TrainConfig:
    """The recipe a model is trained with by default: ``TRANSFER_RECIPE`` for the transfer model, else
    ``TrainConfig``'s defaults (the from-scratch recipe)."""
    return TRANSFER_RECIPE if model == TRANSFER_RECIPE.model else TrainConfig()


@dataclass
class FitResult:
    model: nn.Module  # in eval mode, on ``device``
    history: list[dict]
    normalization: dict  # {"mean": [...], "std": [...]} per channel, for inputs scaled to [0, 1]
    device: str
    config: TrainConfig
    amp: str = "off"
    best_epoch: int | None = None  # the epoch whose weights were restored by early stopping
    stopped_early: bool = False
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- training


def _as_log(log) -> Callable[[str], None]:
    if log is None:
        return logger.info
    if isinstance(log, logging.Logger):
        return log.info
    return log


def fit(
    config: TrainConfig,
    train_images,
    train_labels,
    val_images=None,
    val_labels=None,
    *,
    device: str | torch.device = "auto",
    progress: bool = True,
    on_epoch: Callable[[dict], bool | None] | None = None,
    log: Callable[[str], None] | logging.Logger | None = None,
    num_classes: int | None = None,
) -> FitResult:
    """Train ``config.model`` on uint8 ``train_images`` (N x C x S x S) and integer ``train_labels``.

    ``num_classes`` (the model's outputs): ``len(cache.class_names)`` of the data; None means the default two
    (muffin vs chihuahua).

    With validation images, each epoch is also scored on them (never augmented) and early stopping
    (``config.early_stopping_patience``) may stop training and restore the best weights.
    ``on_epoch(record)`` is called with each history record; returning True stops training.
    ``log`` is ``print``, a logger or None (this module's logger).
    """
    say = _as_log(log)
    channels, size = config.in_channels, config.image_size
    train_images = check_images(train_images, "training images", channels=channels, image_size=size)
    num_classes = len(CLASSES) if num_classes is None else int(num_classes)
    train_labels = check_labels(train_labels, train_images.shape[0], "training labels", num_classes)
    has_val = val_images is not None
    if has_val:
        if val_labels is None:
            raise MuffinError("val_images were given without val_labels; pass both or neither")
        val_images = check_images(val_images, "validation images", channels=channels, image_size=size)
        val_labels = check_labels(val_labels, val_images.shape[0], "validation labels", num_classes)
    if config.early_stopping_patience is not None and not has_val:
        raise MuffinError("early_stopping_patience needs a validation set; pass val_images and val_labels")

    runtime.seed_everything(config.seed)
    device = runtime.resolve_device(device)
    if device.type == "cpu":
        runtime.tune_cpu_allocator()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    amp_dtype = resolve_amp(config.amp, device, config)
    amp_name = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    normalization = pretrained_normalization(channels) if config.pretrained else compute_normalization(train_images)

    model = build_model(config.model, in_channels=channels, image_size=size, num_classes=num_classes,
                        pretrained=config.pretrained)
    # channels-last where it is fast (CPU, CUDA), contiguous NCHW on Apple MPS (runtime.CHANNELS_LAST_AVOIDED);
    # TrainStep's normaliser lays the batches out the same way.
    memory_format = runtime.memory_format_for(device, config.channels_last)
    model = model.to(device, memory_format=memory_format)

    n_train = train_images.shape[0]
    images = place_images(train_images, device)
    labels = train_labels.to(device)
    if has_val:
        val_images = place_images(val_images, device)
    steps = steps_per_epoch(n_train, config.batch_size)
    train_step = TrainStep(model, config, device, normalization, config.epochs * steps)
    order_generator = torch.Generator().manual_seed(config.seed)

    say(
        f"training {config.model} on {n_train} images ({channels}x{size}x{size}), "
        f"{val_images.shape[0] if has_val else 0} validation; device {device}, "
        f"precision {runtime.precision_reason(config.amp, device, config)}, "
        f"{'channels-last' if memory_format == torch.channels_last else 'contiguous'} memory format, "
        f"batch {config.batch_size}, {config.epochs} epochs x {steps} steps, "
        f"{config.optimizer} lr {config.lr:g} ({config.schedule}), augment {config.augment}"
    )
    for note in runtime.device_notes(device, config.amp, config.channels_last):
        say(f"on {device}: {note}")
    history: list[dict] = []
    best = {"loss": math.inf, "epoch": None, "state": None}
    stopped_early = False
    epochs = progress_bar(range(1, config.epochs + 1), enabled=progress, desc=config.model, unit="epoch")
    for epoch in epochs:
        model.train()
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        batches = epoch_batches(n_train, config.batch_size, order_generator)
        for idx in progress_bar(batches, enabled=progress, desc=f"epoch {epoch}", unit="batch", leave=False):
            y = labels[idx.to(labels.device)]
            loss, logits = train_step(take_batch(images, idx, device), y)
            loss_sum += loss * len(idx)
            correct += (logits.argmax(dim=1) == y).sum()
            seen += len(idx)
        train_loss, train_accuracy = loss_sum.item() / seen, correct.item() / seen
        if not math.isfinite(train_loss):
            raise MuffinError(
                f"training diverged in epoch {epoch} (loss {train_loss}); lower the learning rate "
                f"(lr={config.lr:g}) or use amp='off'"
            )
        train_seconds = time.perf_counter() - started
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "val_loss": None,
            "val_accuracy": None,
            "val_zero_one_loss": None,
            "lr": train_step.optimizer.param_groups[0]["lr"],
            "seconds": None,
            "images_per_s": seen / train_seconds,
        }
        if has_val:
            scores = evaluate(
                model, val_images, val_labels, normalization, device=device, batch_size=2 * config.batch_size
            )
            record.update(
                val_loss=scores["loss"], val_accuracy=scores["accuracy"], val_zero_one_loss=scores["zero_one_loss"]
            )
        record["seconds"] = time.perf_counter() - started
        history.append(record)
        postfix = {"loss": f"{train_loss:.3f}"}
        if has_val:
            postfix.update(val_loss=f"{record['val_loss']:.3f}", val_err=f"{record['val_zero_one_loss']:.3f}")
        epochs.set_postfix(postfix)

        if config.early_stopping_patience is not None:
            if record["val_loss"] < best["loss"]:
                best = {"loss": record["val_loss"], "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
            elif epoch - (best["epoch"] or 0) >= config.early_stopping_patience:
                stopped_early = True
        if on_epoch is not None and on_epoch(dict(record)):
            stopped_early = True
        if stopped_early:
            say(f"stopped after epoch {epoch}")
            break
    epochs.close()

    best_epoch = None
    if best["state"] is not None:
        model.load_state_dict(best["state"])
        best_epoch = best["epoch"]
    model.eval()
    last = history[-1]
    say(
        f"done: {len(history)} epochs, {sum(h['seconds'] for h in history):.0f} s, "
        f"{last['images_per_s']:.0f} images/s, train loss {last['train_loss']:.3f}"
        + (f", val zero-one loss {last['val_zero_one_loss']:.3f}" if has_val else "")
        + (f"; restored the weights of epoch {best_epoch}" if best_epoch is not None else "")
    )
    return FitResult(
        model=model,
        history=history,
        normalization=normalization,
        device=str(device),
        config=config,
        amp=amp_name,
        best_epoch=best_epoch,
        stopped_early=stopped_early,
    )


# ----------------------------------------------------------------------------- evaluation


def _logits(
    model: nn.Module, images, normalization: dict, device, batch_size: int, mirror: bool = False
) -> tuple[torch.Tensor, torch.device]:
    """float32 logits of ``model`` (eval mode, no augmentation) for every image, on ``device``; of every image's
    left-right mirror with ``mirror``."""
    device = runtime.resolve_device(device)
    spec = model_spec(model)
    images = check_images(images, "images", channels=spec.get("in_channels"), image_size=spec.get("image_size"))
    if len(normalization["mean"]) != images.shape[1]:
        raise MuffinError(
            f"normalization has {len(normalization['mean'])} channel(s) but the images have {images.shape[1]}"
        )
    # The model's own layout, except where the device avoids channels-last (Apple MPS): NCHW there, weights too.
    channels_last = runtime.channels_last_for(device, uses_channels_last(model))
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    normalize = Normalizer(normalization, device, channels_last)
    was_training = model.training
    model.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            idx = torch.arange(start, min(start + batch_size, images.shape[0]))
            batch = take_batch(images, idx, device)
            outputs.append(model(normalize(batch.flip(-1) if mirror else batch)).float())
    model.train(was_training)
    return torch.cat(outputs), device


def evaluate(
    model: nn.Module,
    images,
    labels,
    normalization: dict,
    *,
    device="auto",
    batch_size: int = 256,
    flip_tta: bool = False,
) -> dict:
    """Mean cross-entropy, accuracy, zero-one loss and error count of ``model`` on uint8 ``images`` (``n`` of them).

    ``flip_tta`` also scores flip test-time augmentation, the mean of the probabilities of each image and its
    left-right mirror: ``flip_tta_errors`` and ``flip_tta_zero_one_loss`` (one more forward pass, no training),
    so that every cross-validation trial can say what the flip would have changed on the same held-out fold.
    """
    logits, device = _logits(model, images, normalization, device, batch_size)
    labels = check_labels(labels, logits.shape[0], "labels", num_classes=logits.shape[1]).to(device)
    loss = F.cross_entropy(logits, labels).item()
    n = int(labels.shape[0])
    errors = int((logits.argmax(dim=1) != labels).sum().item())
    scores = {"loss": loss, "accuracy": 1.0 - errors / n, "zero_one_loss": errors / n, "errors": errors, "n": n}
    if flip_tta:
        mirrored, _ = _logits(model, images, normalization, device, batch_size, mirror=True)
        probabilities = torch.softmax(logits, dim=1) + torch.softmax(mirrored, dim=1)
        tta_errors = int((probabilities.argmax(dim=1) != labels).sum().item())
        scores.update(flip_tta_errors=tta_errors, flip_tta_zero_one_loss=tta_errors / n)
    return scores


def predict_proba(model: nn.Module, images, normalization: dict, *, device="auto", batch_size: int = 256) -> np.ndarray:
    """Class probabilities, N x num_classes (columns in label order: the checkpoint's ``class_names``)."""
    logits, _ = _logits(model, images, normalization, device, batch_size)
    return torch.softmax(logits, dim=1).cpu().numpy()


