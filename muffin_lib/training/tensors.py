"""uint8 image tensors on their way into a model: input checks, normalisation, where the image set lives."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from muffin_lib.config import CLASSES
from muffin_lib.errors import MuffinError
from muffin_lib.text import plural
from muffin_lib.training.models import PRETRAINED_MEAN, PRETRAINED_STD

# Put the whole uint8 training set on the GPU when it takes less than this share of free memory.
GPU_RESIDENT_FRACTION = 0.4


def check_images(images, what: str, *, channels: int | None = None,
                 image_size: int | None = None) -> torch.Tensor:
    """``images`` as a uint8 N x C x H x W tensor, or a MuffinError that says what is wrong with it."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise MuffinError(f"{what} must be a uint8 tensor N x C x H x W, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise MuffinError(f"{what} must have dtype uint8 (decoded pixels 0-255, as cache.load_images gives), "
                          f"got {images.dtype}")
    if images.dim() != 4:
        raise MuffinError(f"{what} must be 4-D N x C x H x W, got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise MuffinError(f"{what} is empty (0 images); check the data folder and split")
    if channels is not None and images.shape[1] != channels:
        raise MuffinError(f"{what} have {plural(images.shape[1], 'channel')} but the model expects "
                          f"{channels} ({'grayscale' if channels == 1 else 'rgb'}); load the images with the "
                          "matching color_mode")
    if image_size is not None and tuple(images.shape[2:]) != (image_size, image_size):
        raise MuffinError(f"{what} are {images.shape[3]}x{images.shape[2]} px but the model expects "
                          f"{image_size}x{image_size}; load the images with image_size={image_size}")
    return images


def check_labels(labels, n: int, what: str, num_classes: int = len(CLASSES)) -> torch.Tensor:
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if labels.dim() != 1 or labels.shape[0] != n:
        raise MuffinError(f"{what} must be a 1-D sequence of {n} labels (one per image), got shape "
                          f"{tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise MuffinError(f"{what} must be integer class indices, got dtype {labels.dtype}")
    labels = labels.to(torch.int64)
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        named = ", ".join(CLASSES) if num_classes == len(CLASSES) else f"{num_classes} classes"
        raise MuffinError(f"{what} must lie in 0..{num_classes - 1} ({named}), found "
                          f"{int(labels.min())}..{int(labels.max())}")
    return labels


def model_spec(model: nn.Module) -> dict:
    """The ``muffin_spec`` ``models.build_model`` attached to ``model``; {} if none."""
    return getattr(model, "muffin_spec", {})


def compute_normalization(images: torch.Tensor, *, chunk: int = 256) -> dict:
    """Per-channel mean and std of uint8 ``images`` on the [0, 1] scale, in float64 chunks."""
    channels = images.shape[1]
    total, total_sq = torch.zeros(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    for block in images.split(chunk):
        block = block.to("cpu", torch.float64)
        total += block.sum(dim=(0, 2, 3))
        total_sq += block.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp(min=0).sqrt().clamp(min=1.0)  # flat images: avoid /0
    return {"mean": (mean / 255).tolist(), "std": (std / 255).tolist()}


def pretrained_normalization(channels: int) -> dict:
    """The pretrained network's own input statistics (``models.PRETRAINED_MEAN`` / ``PRETRAINED_STD``)."""
    if channels == 3:
        return {"mean": list(PRETRAINED_MEAN), "std": list(PRETRAINED_STD)}
    # Greyscale meets the RGB stem summed over its channels, as if grey were repeated: one shared statistic.
    return {"mean": [sum(PRETRAINED_MEAN) / 3], "std": [sum(PRETRAINED_STD) / 3]}


class Normalizer:
    """uint8 batch on the device -> normalised float32 in the model's memory format."""

    def __init__(self, normalization: dict, device: torch.device, channels_last: bool = False):
        mean = torch.tensor(normalization["mean"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(normalization["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = -mean / std
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = torch.addcmul(self.shift, batch.to(torch.float32), self.scale)
        return x.contiguous(memory_format=self.memory_format)


def place_images(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The image set where batches are cut from: on the GPU when it fits comfortably, else on the CPU."""
    if device.type == "cuda":
        fits = images.numel() < GPU_RESIDENT_FRACTION * torch.cuda.mem_get_info(device)[0]
        return images.to(device) if fits else images
    return images.to(device) if device.type == "mps" else images


def take_batch(images: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The images ``idx`` on ``device`` (from the CPU: pinned and copied asynchronously to a GPU)."""
    batch = images.index_select(0, idx.to(images.device))
    if batch.device == device:
        return batch
    if device.type == "cuda" and batch.device.type == "cpu":  # pinned: an async copy overlapping compute
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


def uses_channels_last(model: nn.Module) -> bool:
    """Whether ``model``'s 4-D weights are in channels-last memory format (its inputs should be too)."""
    return any(p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
               for p in model.parameters())
