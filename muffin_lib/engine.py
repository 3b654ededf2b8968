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
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from muffin_lib import augment, runtime
from muffin_lib.config import CLASSES, COLOR_MODES, channels_for
from muffin_lib.errors import MuffinError
from muffin_lib.models import IMAGENET_MEAN, IMAGENET_STD, MIN_IMAGE_SIZE, MODEL_NAMES, build_model
from muffin_lib.progress import progress_bar

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
AMP_MODES = ("auto", "bf16", "fp16", "off")
CHECKPOINT_FORMAT = "muffin-checkpoint"
CHECKPOINT_VERSION = 1
# Part of every trial key and checkpoint-reuse check (with imageio.PREPROCESS_VERSION and execution_key):
# bump when an architecture in models.py or the training step changes results.
CODE_VERSION = 2
# Put the whole uint8 training set on the GPU when it takes less than this share of free memory.
GPU_RESIDENT_FRACTION = 0.4
# Fields that change speed but not what is learnt; left out of TrainConfig.key().
_PERFORMANCE_ONLY_FIELDS = ("channels_last", "compile")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run. ``lr`` is the peak learning rate of the schedule."""

    model: str = "simple_cnn"
    image_size: int = 128
    color_mode: str = "grayscale"
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    schedule: str = "onecycle"
    augment: str = "flip_rotate"
    label_smoothing: float = 0.0
    early_stopping_patience: int | None = None
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    pretrained: bool = False

    def __post_init__(self) -> None:
        choices = {
            "model": MODEL_NAMES,
            "color_mode": COLOR_MODES,
            "optimizer": OPTIMIZERS,
            "schedule": SCHEDULES,
            "augment": tuple(augment.AUGMENT_PRESETS),
            "amp": AMP_MODES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise MuffinError(f"TrainConfig.{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.image_size < MIN_IMAGE_SIZE:
            raise MuffinError(f"TrainConfig.image_size must be at least {MIN_IMAGE_SIZE}, got {self.image_size}")
        if self.epochs < 1 or self.batch_size < 1:
            raise MuffinError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.label_smoothing < 1:
            raise MuffinError(
                f"need lr > 0, weight_decay >= 0 and 0 <= label_smoothing < 1; got lr={self.lr}, "
                f"weight_decay={self.weight_decay}, label_smoothing={self.label_smoothing}"
            )
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise MuffinError(f"early_stopping_patience must be None or >= 1, got {self.early_stopping_patience}")
        if self.pretrained and self.model != "transfer":
            raise MuffinError(f"pretrained=True needs model='transfer', got model={self.model!r}")

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
        """Stable 12-hex-digit hash of the fields that affect results (not channels_last/compile)."""
        relevant = {k: v for k, v in self.to_dict().items() if k not in _PERFORMANCE_ONLY_FIELDS}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


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


# ----------------------------------------------------------------------------- input checks


def check_images(images, what: str, *, channels: int | None = None, image_size: int | None = None) -> torch.Tensor:
    """``images`` as a uint8 N x C x H x W tensor, or a MuffinError that says what is wrong with it."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise MuffinError(f"{what} must be a uint8 tensor N x C x H x W, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise MuffinError(
            f"{what} must have dtype uint8 (decoded pixels 0-255, as cache.load_images gives), got {images.dtype}"
        )
    if images.dim() != 4:
        raise MuffinError(f"{what} must be 4-D N x C x H x W, got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise MuffinError(f"{what} is empty (0 images); check the data folder and split")
    if channels is not None and images.shape[1] != channels:
        raise MuffinError(
            f"{what} have {images.shape[1]} channel(s) but the model expects {channels} "
            f"({'grayscale' if channels == 1 else 'rgb'}); load the images with the matching color_mode"
        )
    if image_size is not None and tuple(images.shape[2:]) != (image_size, image_size):
        raise MuffinError(
            f"{what} are {images.shape[3]}x{images.shape[2]} px but the model expects "
            f"{image_size}x{image_size}; load the images with image_size={image_size}"
        )
    return images


def check_labels(labels, n: int, what: str, num_classes: int = len(CLASSES)) -> torch.Tensor:
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if labels.dim() != 1 or labels.shape[0] != n:
        raise MuffinError(f"{what} must be a 1-D sequence of {n} labels (one per image), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise MuffinError(f"{what} must be integer class indices, got dtype {labels.dtype}")
    labels = labels.to(torch.int64)
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise MuffinError(
            f"{what} must lie in 0..{num_classes - 1} ({', '.join(CLASSES)}), found "
            f"{int(labels.min())}..{int(labels.max())}"
        )
    return labels


def _model_spec(model: nn.Module) -> dict:
    return getattr(model, "muffin_spec", {})


# ----------------------------------------------------------------------------- normalisation, batches


def compute_normalization(images: torch.Tensor, *, chunk: int = 256) -> dict:
    """Per-channel mean and std of uint8 ``images`` on the [0, 1] scale, in float64 chunks."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for block in images.split(chunk):
        block = block.to("cpu", torch.float64)
        total += block.sum(dim=(0, 2, 3))
        total_sq += block.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp(min=0).sqrt().clamp(min=1.0)  # flat images: avoid /0
    return {"mean": (mean / 255).tolist(), "std": (std / 255).tolist()}


def imagenet_normalization(channels: int) -> dict:
    if channels == 3:
        return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    # Greyscale is repeated to 3 channels inside TransferNet; one shared statistic is the closest fit.
    return {"mean": [sum(IMAGENET_MEAN) / 3], "std": [sum(IMAGENET_STD) / 3]}


class _Normalizer:
    """uint8 batch on the device -> normalised float32 (in the model's memory format)."""

    def __init__(self, normalization: dict, device: torch.device, channels_last: bool):
        mean = torch.tensor(normalization["mean"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(normalization["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = -mean / std
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = torch.addcmul(self.shift, batch.to(torch.float32), self.scale)
        return x.contiguous(memory_format=self.memory_format)


def _place_images(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The image set where batches are cut from: on the GPU when it fits comfortably, else on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.numel() < GPU_RESIDENT_FRACTION * free:
            return images.to(device)
        return images
    if device.type == "mps":
        return images.to(device)
    return images


def _take(images: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    batch = images.index_select(0, idx.to(images.device))
    if batch.device == device:
        return batch
    if device.type == "cuda":  # pinned staging buffer -> asynchronous copy that overlaps compute
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


def _uses_channels_last(model: nn.Module) -> bool:
    return any(
        p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
        for p in model.parameters()
    )


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None = full float32)."""
    if amp not in AMP_MODES:
        raise MuffinError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "off":
        return None
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if amp == "auto":
            return torch.bfloat16 if bf16_ok else torch.float16
        if amp == "bf16" and not bf16_ok:
            raise MuffinError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16 support; use --amp fp16")
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cpu":
        # CPU autocast only when asked: without AVX-512-BF16/AMX, bf16 convolutions are slower than fp32.
        if amp == "fp16":
            raise MuffinError("amp='fp16' needs a CUDA GPU; on the CPU use amp='bf16' or 'off'")
        return torch.bfloat16 if amp == "bf16" else None
    # MPS: explicit choices only.
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)


_PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def execution_key(amp: str, device: str | torch.device = "auto") -> str:
    """``"<device type>/<precision>"`` a run with ``amp`` on ``device`` trains in, e.g. ``cpu/fp32``,
    ``cuda/bf16``, ``cuda/fp16``: the resolved device (``auto`` -> what this machine has) and autocast
    dtype (``resolve_amp``; none = fp32). Part of trial keys and checkpoint reuse, so results of another
    device type or precision are never taken for this one."""
    device = runtime.resolve_device(device)
    return f"{device.type}/{_PRECISION_NAMES[resolve_amp(amp, device)]}"


# ----------------------------------------------------------------------------- training


def _make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # No weight decay on biases and BatchNorm parameters (the usual AdamW recipe).
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    if device.type in ("cuda", "cpu"):
        # The fused kernel is one pass over each parameter; on CPU it beats the per-tensor loop.
        try:
            return optimizer_class(groups, lr=config.lr, fused=True)
        except RuntimeError:  # torch < 2.4 has no fused CPU kernel
            pass
    return optimizer_class(groups, lr=config.lr)


def _make_scheduler(optimizer, config: TrainConfig, total_steps: int):
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return None


def _grad_scaler(device: torch.device, enabled: bool):
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


class TrainStep:
    """One optimisation step of ``fit`` on a uint8 batch already on the device: normalise, augment,
    forward and backward under autocast, optimizer and schedule step. ``bench`` times this same object."""

    def __init__(self, model: nn.Module, config: TrainConfig, device: torch.device, normalization: dict,
                 total_steps: int):
        self.amp_dtype = resolve_amp(config.amp, device)
        self.device = device
        self.model = torch.compile(model) if config.compile else model
        self.normalize = _Normalizer(normalization, device, config.channels_last)
        self.augment_kwargs = augment.AUGMENT_PRESETS[config.augment]
        self.generator = torch.Generator(device=device).manual_seed(config.seed + 1)
        self.optimizer = _make_optimizer(model, config, device)
        self.scheduler = _make_scheduler(self.optimizer, config, total_steps)
        self.scaler = _grad_scaler(device, enabled=self.amp_dtype == torch.float16)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    def __call__(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on uint8 ``batch`` (N x C x H x W); returns the (detached) loss and logits."""
        x = augment.augment_batch(self.normalize(batch), generator=self.generator, **self.augment_kwargs)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.model(x)
            loss = self.criterion(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.detach(), logits.detach()


def _batch_starts(n: int, batch_size: int) -> list[int]:
    starts = list(range(0, n, batch_size))
    # A last batch of one image would make BatchNorm's batch statistics degenerate; drop it.
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return starts


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
) -> FitResult:
    """Train ``config.model`` on uint8 ``train_images`` (N x C x S x S) and integer ``train_labels``.

    With validation images, each epoch is also scored on them (never augmented) and early stopping
    (``config.early_stopping_patience``) may stop training and restore the best weights.
    ``on_epoch(record)`` is called with each history record; returning True stops training.
    ``log`` is ``print``, a logger or None (this module's logger).
    """
    say = _as_log(log)
    channels, size = config.in_channels, config.image_size
    train_images = check_images(train_images, "training images", channels=channels, image_size=size)
    train_labels = check_labels(train_labels, train_images.shape[0], "training labels")
    has_val = val_images is not None
    if has_val:
        if val_labels is None:
            raise MuffinError("val_images were given without val_labels; pass both or neither")
        val_images = check_images(val_images, "validation images", channels=channels, image_size=size)
        val_labels = check_labels(val_labels, val_images.shape[0], "validation labels")
    if config.early_stopping_patience is not None and not has_val:
        raise MuffinError("early_stopping_patience needs a validation set; pass val_images and val_labels")

    runtime.seed_everything(config.seed)
    device = runtime.resolve_device(device)
    if device.type == "cpu":
        runtime.tune_cpu_allocator()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    amp_dtype = resolve_amp(config.amp, device)
    amp_name = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    normalization = imagenet_normalization(channels) if config.pretrained else compute_normalization(train_images)

    model = build_model(config.model, in_channels=channels, image_size=size, pretrained=config.pretrained)
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)

    n_train = train_images.shape[0]
    images = _place_images(train_images, device)
    labels = train_labels.to(device)
    if has_val:
        val_images = _place_images(val_images, device)
    starts = _batch_starts(n_train, config.batch_size)
    total_steps = config.epochs * len(starts)
    train_step = TrainStep(model, config, device, normalization, total_steps)
    order_generator = torch.Generator().manual_seed(config.seed)

    say(
        f"training {config.model} on {n_train} images ({channels}x{size}x{size}), "
        f"{val_images.shape[0] if has_val else 0} validation; device {device}, amp {amp_name}, "
        f"batch {config.batch_size}, {config.epochs} epochs x {len(starts)} steps, "
        f"{config.optimizer} lr {config.lr:g} ({config.schedule}), augment {config.augment}"
    )
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
        order = torch.randperm(n_train, generator=order_generator)
        steps = progress_bar(starts, enabled=progress, desc=f"epoch {epoch}", unit="batch", leave=False)
        for start in steps:
            idx = order[start : start + config.batch_size]
            y = labels[idx.to(labels.device)]
            loss, logits = train_step(_take(images, idx, device), y)
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


def _logits(model: nn.Module, images, normalization: dict, device, batch_size: int) -> tuple[torch.Tensor, torch.device]:
    """float32 logits of ``model`` (eval mode, no augmentation) for every image, on ``device``."""
    device = runtime.resolve_device(device)
    spec = _model_spec(model)
    images = check_images(images, "images", channels=spec.get("in_channels"), image_size=spec.get("image_size"))
    if len(normalization["mean"]) != images.shape[1]:
        raise MuffinError(
            f"normalization has {len(normalization['mean'])} channel(s) but the images have {images.shape[1]}"
        )
    model.to(device)
    normalize = _Normalizer(normalization, device, _uses_channels_last(model))
    was_training = model.training
    model.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            idx = torch.arange(start, min(start + batch_size, images.shape[0]))
            outputs.append(model(normalize(_take(images, idx, device))).float())
    model.train(was_training)
    return torch.cat(outputs), device


def evaluate(model: nn.Module, images, labels, normalization: dict, *, device="auto", batch_size: int = 256) -> dict:
    """Mean cross-entropy, accuracy, zero-one loss and error count of ``model`` on uint8 ``images`` (``n`` of them)."""
    logits, device = _logits(model, images, normalization, device, batch_size)
    labels = check_labels(labels, logits.shape[0], "labels", num_classes=logits.shape[1]).to(device)
    loss = F.cross_entropy(logits, labels).item()
    n = int(labels.shape[0])
    errors = int((logits.argmax(dim=1) != labels).sum().item())
    return {"loss": loss, "accuracy": 1.0 - errors / n, "zero_one_loss": errors / n, "errors": errors, "n": n}


def predict_proba(model: nn.Module, images, normalization: dict, *, device="auto", batch_size: int = 256) -> np.ndarray:
    """Class probabilities, N x num_classes (columns in ``config.CLASSES`` order)."""
    logits, _ = _logits(model, images, normalization, device, batch_size)
    return torch.softmax(logits, dim=1).cpu().numpy()


# ----------------------------------------------------------------------------- checkpoints


def _versions() -> dict:
    import torchvision

    from muffin_lib import __version__

    return {"muffin_lib": str(__version__), "torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}


def save_checkpoint(path, fit_result: FitResult, *, class_names=CLASSES, extra: dict | None = None) -> Path:
    """Write the model and everything needed to use it again to ``path`` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = fit_result.config
    model = fit_result.model
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "model_name": config.model,
        "config": config.to_dict(),
        "config_key": config.key(),
        "image_size": config.image_size,
        "color_mode": config.color_mode,
        "in_channels": config.in_channels,
        "num_classes": _model_spec(model).get("num_classes", len(class_names)),
        "normalization": {k: list(v) for k, v in fit_result.normalization.items()},
        "class_names": list(class_names),
        "history": [dict(h) for h in fit_result.history],
        "best_epoch": fit_result.best_epoch,
        "trained_on": fit_result.device,
        "amp": fit_result.amp,
        "versions": _versions(),
        "extra": dict(extra or {}),
        "state_dict": state,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path, device="auto") -> tuple[nn.Module, dict]:
    """The model (eval mode, on ``device``) and the checkpoint dict written by ``save_checkpoint``."""
    path = Path(path)
    if not path.is_file():
        raise MuffinError(f"checkpoint {path} does not exist; train one with `python -m muffin_lib train ... --out {path}`")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise MuffinError(
            f"checkpoint {path} could not be read ({type(error).__name__}: {str(error)[:200]}); "
            "it is damaged or not a PyTorch file: train again to recreate it"
        ) from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise MuffinError(f"{path} is a PyTorch file but not a muffin checkpoint (no format={CHECKPOINT_FORMAT!r})")
    if checkpoint.get("format_version", 0) > CHECKPOINT_VERSION:
        raise MuffinError(
            f"checkpoint {path} has format version {checkpoint['format_version']}, newer than this "
            f"muffin_lib understands ({CHECKPOINT_VERSION}); update muffin_lib"
        )
    model = build_model(
        checkpoint["model_name"],
        in_channels=checkpoint["in_channels"],
        image_size=checkpoint["image_size"],
        num_classes=checkpoint["num_classes"],
    )
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise MuffinError(f"checkpoint {path}: weights do not fit model {checkpoint['model_name']!r} ({error})") from error
    device = runtime.resolve_device(device)
    model.to(device)
    if checkpoint["config"].get("channels_last", False):
        model.to(memory_format=torch.channels_last)
    model.eval()
    return model, checkpoint
