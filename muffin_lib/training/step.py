"""The parts of ``engine.fit``'s training loop: the optimizer and learning-rate schedule of a config, the
seeded batch order of an epoch, and ``TrainStep`` (one optimisation step, its inputs normalised by
``tensors.Normalizer``).

They are public so that notebook 03 can write fit's loop out with them in plain sight;
``tests/test_training_loop.py`` checks that its loop gives fit's history. ``engine`` re-exports them.
``config`` is always an ``engine.TrainConfig``.
"""

from __future__ import annotations

import torch
from torch import nn

from muffin_lib.training import augment
from muffin_lib.training.runtime import channels_last_for, resolve_amp
from muffin_lib.training.tensors import Normalizer


def make_optimizer(model: nn.Module, config, device: torch.device) -> torch.optim.Optimizer:
    """``config.optimizer`` at ``config.lr``, with ``config.weight_decay`` on weights but not on biases and
    BatchNorm parameters (the usual AdamW recipe)."""
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


def make_schedule(optimizer, config, total_steps: int):
    """The learning-rate schedule over all ``total_steps`` steps (one-cycle: up to ``config.lr``, then down to
    about zero), stepped after every batch; None for a constant rate."""
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
    """One optimisation step of ``fit`` on a uint8 batch already on the device: normalise, augment, forward
    and backward under autocast, optimizer and schedule step. ``bench`` times this same object."""

    def __init__(self, model: nn.Module, config, device: torch.device, normalization: dict, total_steps: int):
        self.amp_dtype = resolve_amp(config.amp, device, config)
        self.device = device
        self.model = torch.compile(model) if config.compile else model
        self.normalize = Normalizer(normalization, device, channels_last_for(device, config.channels_last))
        self.augment_kwargs = augment.AUGMENT_PRESETS[config.augment]
        self.generator = torch.Generator(device=device).manual_seed(config.seed + 1)
        self.optimizer = make_optimizer(model, config, device)
        self.scheduler = make_schedule(self.optimizer, config, total_steps)
        self.scaler = _grad_scaler(device, enabled=self.amp_dtype == torch.float16)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    def __call__(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on uint8 ``batch`` (N x C x H x W) and integer ``labels``; returns the (detached) loss and logits."""
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
    """Where the batches of an epoch over ``n`` images start (a last batch of one image is dropped)."""
    starts = list(range(0, n, batch_size))
    # A last batch of one image would make BatchNorm's batch statistics degenerate; drop it.
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return starts


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches in an epoch over ``n`` images (a last batch of one image is dropped: BatchNorm needs two)."""
    return len(batch_starts(n, batch_size))


def epoch_batches(n: int, batch_size: int, order: torch.Generator) -> list[torch.Tensor]:
    """One epoch's batches of indices into the ``n`` training images: a fresh random permutation drawn from
    ``order`` (fit's is a CPU generator seeded with ``config.seed``, drawn once per epoch), cut every
    ``batch_size``."""
    shuffled = torch.randperm(n, generator=order)
    return [shuffled[start : start + batch_size] for start in batch_starts(n, batch_size)]
