"""The training loop: ``train_one_epoch``, ``evaluate`` and ``fit`` (setup, epochs, early stopping).

Images arrive decoded once (``cache.load_images``) as uint8 N x C x H x W. Each step takes a seeded
random batch to the device, where it is normalised and augmented, and runs the model under autocast
where that pays: no DataLoader and no per-sample Python in the loop.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from muffin_lib.config import CLASSES
from muffin_lib.errors import MuffinError
from muffin_lib.progress import progress_bar
from muffin_lib.text import plural
from muffin_lib.training import augment, runtime
from muffin_lib.training.models import build_model
from muffin_lib.training.recipe import TrainConfig
from muffin_lib.training.tensors import (
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


# ----------------------------------------------------------------------------- one step, one epoch


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """``config.optimizer`` at ``config.lr``, with weight decay on weights but not on biases and BatchNorm."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    # The fused kernel is one pass over each parameter: faster than the per-tensor loop on CPU and CUDA.
    return optimizer_class(groups, lr=config.lr, fused=device.type in ("cuda", "cpu"))


def make_schedule(optimizer, config: TrainConfig, total_steps: int):
    """The schedule over ``total_steps`` batches (one-cycle: up to ``config.lr``, then to about zero)."""
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return None


class TrainStep:
    """One optimisation step on a uint8 batch on the device: normalise, augment, forward and backward under
    autocast, optimizer and schedule step. ``bench`` times this same object."""

    def __init__(self, model: nn.Module, config: TrainConfig, device: torch.device, normalization: dict,
                 total_steps: int):
        self.amp_dtype = runtime.resolve_amp(config.amp, device, config)
        self.device = device
        self.model = torch.compile(model) if config.compile else model
        channels_last = runtime.channels_last_for(device, config.channels_last)
        self.normalize = Normalizer(normalization, device, channels_last)
        self.augment_kwargs = augment.AUGMENT_PRESETS[config.augment]
        self.generator = torch.Generator(device=device).manual_seed(config.seed + 1)
        self.optimizer = make_optimizer(model, config, device)
        self.scheduler = make_schedule(self.optimizer, config, total_steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    def __call__(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on uint8 ``batch`` and integer ``labels``; returns the detached loss and logits."""
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


def batch_starts(n: int, batch_size: int) -> list[int]:
    """Where the batches of an epoch over ``n`` images start."""
    starts = list(range(0, n, batch_size))
    # A last batch of one image would make BatchNorm's batch statistics degenerate; drop it.
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return starts


def steps_per_epoch(n: int, batch_size: int) -> int:
    return len(batch_starts(n, batch_size))


def epoch_batches(n: int, batch_size: int, order: torch.Generator) -> list[torch.Tensor]:
    """One epoch's batches of indices: a fresh permutation drawn from ``order``, cut every ``batch_size``."""
    shuffled = torch.randperm(n, generator=order)
    return [shuffled[start : start + batch_size] for start in batch_starts(n, batch_size)]


def train_one_epoch(step: TrainStep, images: torch.Tensor, labels: torch.Tensor, batches) -> dict:
    """One pass of ``step`` over ``batches`` (index tensors): mean loss, accuracy and images per second."""
    step.model.train()
    started = time.perf_counter()
    loss_sum = torch.zeros((), device=step.device)
    correct = torch.zeros((), device=step.device, dtype=torch.int64)
    seen = 0
    for idx in batches:
        y = labels[idx.to(labels.device)]
        loss, logits = step(take_batch(images, idx, step.device), y)
        loss_sum += loss * len(idx)
        correct += (logits.argmax(dim=1) == y).sum()
        seen += len(idx)
    return {"train_loss": loss_sum.item() / seen, "train_accuracy": correct.item() / seen,
            "images_per_s": seen / (time.perf_counter() - started)}


# ----------------------------------------------------------------------------- evaluation


def _logits(model: nn.Module, images, normalization: dict, device, batch_size: int,
            mirror: bool = False, pooled: bool = False, progress: bool = False
            ) -> tuple[torch.Tensor, torch.device]:
    """float32 logits of ``model`` in eval mode for every image (or its left-right mirror), on ``device``;
    ``pooled``: the pooled features its classifier reads instead (timm's ``pre_logits``)."""
    device = runtime.resolve_device(device)
    spec = model_spec(model)
    size = spec.get("image_size")
    images = check_images(images, "images", channels=spec.get("in_channels"), image_size=size)
    if len(normalization["mean"]) != images.shape[1]:
        raise MuffinError(f"normalization has {plural(len(normalization['mean']), 'channel')} but the images "
                          f"have {images.shape[1]}")
    # The model's own layout, except where the device avoids channels-last (Apple MPS).
    channels_last = runtime.channels_last_for(device, uses_channels_last(model))
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    normalize = Normalizer(normalization, device, channels_last)
    was_training = model.training
    model.eval()
    outputs = []
    forward = (lambda x: model.forward_head(model.forward_features(x), pre_logits=True)) if pooled else model
    with torch.inference_mode():
        for start in progress_bar(range(0, images.shape[0], batch_size), enabled=progress,
                                  desc="features" if pooled else "predict", unit="batch", leave=False):
            batch = take_batch(images, torch.arange(start, min(start + batch_size, images.shape[0])), device)
            outputs.append(forward(normalize(batch.flip(-1) if mirror else batch)).float())
    model.train(was_training)
    return torch.cat(outputs), device


def scores_of(errors: int, n: int, loss: float | None = None) -> dict:
    """The score dict every evaluation returns: loss, accuracy, zero-one loss, errors and n."""
    return {"loss": loss, "accuracy": 1.0 - errors / n, "zero_one_loss": errors / n, "errors": errors, "n": n}


def evaluate(model: nn.Module, images, labels, normalization: dict, *, device="auto", batch_size: int = 256,
             flip_tta: bool = False) -> dict:
    """Mean cross-entropy, accuracy, zero-one loss and error count of ``model`` on uint8 ``images``.

    ``flip_tta`` also scores the mean probabilities of each image and its mirror (``flip_tta_errors``,
    ``flip_tta_zero_one_loss``), so every CV trial says what the flip would have changed on its fold.
    """
    logits, device = _logits(model, images, normalization, device, batch_size)
    labels = check_labels(labels, logits.shape[0], "labels", num_classes=logits.shape[1]).to(device)
    errors = int((logits.argmax(dim=1) != labels).sum().item())
    scores = scores_of(errors, int(labels.shape[0]), F.cross_entropy(logits, labels).item())
    if flip_tta:
        mirrored, _ = _logits(model, images, normalization, device, batch_size, mirror=True)
        probabilities = torch.softmax(logits, dim=1) + torch.softmax(mirrored, dim=1)
        tta_errors = int((probabilities.argmax(dim=1) != labels).sum().item())
        scores.update(flip_tta_errors=tta_errors, flip_tta_zero_one_loss=tta_errors / scores["n"])
    return scores


def predict_proba(model: nn.Module, images, normalization: dict, *, device="auto",
                  batch_size: int = 256) -> np.ndarray:
    """Class probabilities, N x num_classes (columns in label order: the checkpoint's ``class_names``)."""
    logits, _ = _logits(model, images, normalization, device, batch_size)
    return torch.softmax(logits, dim=1).cpu().numpy()


# ----------------------------------------------------------------------------- fit


@dataclass
class FitResult:
    model: nn.Module  # in eval mode, on ``device``
    history: list[dict]
    normalization: dict  # {"mean": [...], "std": [...]} per channel, for inputs scaled to [0, 1]
    device: str
    config: TrainConfig
    amp: str = "off"
    best_epoch: int | None = None  # the epoch whose weights early stopping restored
    stopped_early: bool = False
    extra: dict = field(default_factory=dict)


def _as_log(log) -> Callable[[str], None]:
    if log is None:
        return logger.info
    return log.info if isinstance(log, logging.Logger) else log


def _checked(config: TrainConfig, pair, what: str, num_classes: int):
    """``pair`` = (uint8 images, integer labels), checked against ``config``; None stays None."""
    if pair is None:
        return None
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise MuffinError(f"{what} data must be a pair (images, labels), got {type(pair).__name__}")
    size = config.image_size
    images = check_images(pair[0], f"{what} images", channels=config.in_channels, image_size=size)
    return images, check_labels(pair[1], images.shape[0], f"{what} labels", num_classes)


def _build(config: TrainConfig, device, train_images: torch.Tensor, num_classes: int):
    """Seeds, the device, the normalisation statistics and the model on the device, in its memory format."""
    runtime.seed_everything(config.seed)
    device = runtime.resolve_device(device)
    if device.type == "cpu":
        runtime.tune_cpu_allocator()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    channels = config.in_channels
    normalization = (pretrained_normalization(channels) if config.pretrained
                     else compute_normalization(train_images))
    model = build_model(config.model, in_channels=channels, image_size=config.image_size,
                        num_classes=num_classes, pretrained=config.pretrained)
    model = model.to(device, memory_format=runtime.memory_format_for(device, config.channels_last))
    return device, model, normalization


def _describe(config: TrainConfig, device, n_train: int, n_val: int, steps: int) -> str:
    fast = runtime.memory_format_for(device, config.channels_last) == torch.channels_last
    layout = "channels-last" if fast else "contiguous"
    return (f"training {config.model} on {n_train} images ({config.in_channels}x{config.image_size}x"
            f"{config.image_size}), {n_val} validation; device {device}, precision "
            f"{runtime.precision_reason(config.amp, device, config)}, {layout} memory format, batch "
            f"{config.batch_size}, {config.epochs} epochs x {steps} steps, {config.optimizer} lr "
            f"{config.lr:g} ({config.schedule}), augment {config.augment}")


class _EarlyStopping:
    """Keeps the weights of the best validation loss; says stop after ``patience`` epochs without one."""

    def __init__(self, patience: int | None):
        self.patience, self.loss, self.epoch, self.state = patience, math.inf, None, None

    def stop(self, record: dict, model: nn.Module) -> bool:
        if self.patience is None:
            return False
        if record["val_loss"] < self.loss:
            self.loss, self.epoch = record["val_loss"], record["epoch"]
            self.state = copy.deepcopy(model.state_dict())
            return False
        return record["epoch"] - (self.epoch or 0) >= self.patience


def _summary(history: list[dict], best_epoch: int | None) -> str:
    last = history[-1]
    return (f"done: {len(history)} epochs, {sum(h['seconds'] for h in history):.0f} s, "
            f"{last['images_per_s']:.0f} images/s, train loss {last['train_loss']:.3f}"
            + (f", val zero-one loss {last['val_zero_one_loss']:.3f}" if last["val_loss"] is not None else "")
            + (f"; restored the weights of epoch {best_epoch}" if best_epoch is not None else ""))


def _epoch_record(epoch: int, trained: dict, lr: float, scores: dict | None) -> dict:
    """One epoch's history row: its training figures, the lr, and its validation ``scores`` (or None)."""
    scores = scores or {}
    return {"epoch": epoch, **trained, "val_loss": scores.get("loss"), "val_accuracy": scores.get("accuracy"),
            "val_zero_one_loss": scores.get("zero_one_loss"), "lr": lr}


def _epochs(config: TrainConfig, model: nn.Module, train, val, normalization: dict, device, progress: bool):
    """Every layer trains (from scratch, or fine-tuning): one ``TrainStep`` per batch; yields each epoch."""
    images, labels = place_images(train[0], device), train[1].to(device)
    val = None if val is None else (place_images(val[0], device), val[1])
    step = TrainStep(model, config, device, normalization,
                     config.epochs * steps_per_epoch(images.shape[0], config.batch_size))
    order = torch.Generator().manual_seed(config.seed)
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        batches = progress_bar(epoch_batches(images.shape[0], config.batch_size, order), enabled=progress,
                               desc=f"epoch {epoch}", unit="batch", leave=False)
        trained = train_one_epoch(step, images, labels, batches)
        scores = None if val is None else evaluate(model, *val, normalization, device=device,
                                                   batch_size=2 * config.batch_size)
        record = _epoch_record(epoch, trained, step.optimizer.param_groups[0]["lr"], scores)
        yield {**record, "seconds": time.perf_counter() - started}


def _head_epochs(config: TrainConfig, model: nn.Module, train, val, normalization: dict, device,
                 progress: bool):
    """The linear probe: the pretrained network frozen, each image's pooled features computed once (eval
    mode, no augmentation), then only its new head trained on them with the recipe's optimizer and
    schedule, in seconds; yields each epoch (the first one's seconds include the features)."""
    started = time.perf_counter()
    # The features pass is the probe's whole cost: it gets the progress bar (the head's epochs take ms).
    features = _logits(model, train[0], normalization, device, 2 * config.batch_size, pooled=True,
                       progress=progress)[0]
    labels = train[1].to(device)
    val = None if val is None else (_logits(model, val[0], normalization, device, 2 * config.batch_size,
                                            pooled=True, progress=progress)[0], val[1].to(device))
    # The network's rate is the features' (each image once); the head's epochs take milliseconds.
    images_per_s = (len(labels) + (0 if val is None else len(val[1]))) / (time.perf_counter() - started)
    head = model.get_classifier()
    optimizer = make_optimizer(head, config, device)
    steps = config.epochs * steps_per_epoch(len(labels), config.batch_size)
    scheduler = make_schedule(optimizer, config, steps)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    order = torch.Generator().manual_seed(config.seed)
    for epoch in range(1, config.epochs + 1):
        loss_sum, correct = 0.0, 0
        for idx in epoch_batches(len(labels), config.batch_size, order):
            logits = head(features[idx])
            loss = criterion(logits, labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(dim=1) == labels[idx]).sum())
        seconds, n = time.perf_counter() - started, len(labels)
        trained = {"train_loss": loss_sum / n, "train_accuracy": correct / n, "images_per_s": images_per_s}
        scores = None
        if val is not None:
            with torch.no_grad():
                val_logits = head(val[0])
            errors = int((val_logits.argmax(dim=1) != val[1]).sum())
            scores = scores_of(errors, len(val[1]), F.cross_entropy(val_logits, val[1]).item())
        yield {**_epoch_record(epoch, trained, optimizer.param_groups[0]["lr"], scores), "seconds": seconds}
        started = time.perf_counter()


def fit(config: TrainConfig, train, val=None, *, device: str | torch.device = "auto", progress: bool = True,
        on_epoch: Callable[[dict], bool | None] | None = None, log=None, num_classes: int | None = None
        ) -> FitResult:
    """Train ``config.model`` on ``train`` = (uint8 images N x C x S x S, integer labels).

    With ``val`` = (images, labels), each epoch is scored on it and early stopping may restore the best
    weights. ``on_epoch(record)`` returning True stops training. ``log``: ``print``, a logger or None.
    ``num_classes``: the model's outputs, ``len(cache.class_names)``; None means muffin vs chihuahua.
    """
    say = _as_log(log)
    num_classes = len(CLASSES) if num_classes is None else int(num_classes)
    images, labels = _checked(config, train, "training", num_classes)
    val = _checked(config, val, "validation", num_classes)
    if config.early_stopping_patience is not None and val is None:
        raise MuffinError("early_stopping_patience needs a validation set; pass val=(images, labels)")
    device, model, normalization = _build(config, device, images, num_classes)
    steps = steps_per_epoch(images.shape[0], config.batch_size)
    say(_describe(config, device, images.shape[0], 0 if val is None else val[0].shape[0], steps))
    for note in runtime.device_notes(device, config.amp, config.channels_last):
        say(f"on {device}: {note}")
    each_epoch = _head_epochs if config.train_layers == "head" else _epochs
    history, stopper, stopped_early = [], _EarlyStopping(config.early_stopping_patience), False
    epochs = progress_bar(each_epoch(config, model, (images, labels), val, normalization, device, progress),
                          enabled=progress, total=config.epochs, desc=config.model, unit="epoch")
    for record in epochs:
        if not math.isfinite(record["train_loss"]):
            raise MuffinError(f"training diverged in epoch {record['epoch']} (loss {record['train_loss']}); "
                              f"lower the learning rate (lr={config.lr:g}) or use amp='off'")
        history.append(record)
        epochs.set_postfix(loss=f"{record['train_loss']:.3f}", **({} if val is None else {
            "val_err": f"{record['val_zero_one_loss']:.3f}"}))
        stopped_early = stopper.stop(record, model) | bool(on_epoch is not None and on_epoch(dict(record)))
        if stopped_early:
            say(f"stopped after epoch {record['epoch']}")
            break
    epochs.close()
    if stopper.state is not None:
        model.load_state_dict(stopper.state)
    model.eval()
    best_epoch = stopper.epoch if stopper.state is not None else None
    say(_summary(history, best_epoch))
    amp = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[runtime.resolve_amp(config.amp, device,
                                                                                          config)]
    return FitResult(model=model, history=history, normalization=normalization, device=str(device),
                     config=config, amp=amp, best_epoch=best_epoch, stopped_early=stopped_early)
