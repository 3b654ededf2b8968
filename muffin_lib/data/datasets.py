"""A torch Dataset over an ImageCache, and the way back from a cached image to its original file."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from muffin_lib.data.cache import ImageCache
from muffin_lib.data.imageio import load_image


class TensorImageDataset(Dataset):
    """Yields ``(uint8 C x H x W image, int64 label)`` for ``indices`` into the cache (default: all)."""

    def __init__(self, cache: ImageCache, indices: Sequence[int] | np.ndarray | torch.Tensor | None = None):
        self.cache = cache
        if indices is None:
            self.indices = torch.arange(len(cache))
        else:
            self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
            if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= len(cache)):
                raise IndexError(f"indices must lie in [0, {len(cache)}) for this {cache.split} cache")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = self.indices[i]
        return self.cache.images[j], self.cache.labels[j]

    @property
    def labels(self) -> torch.Tensor:
        return self.cache.labels[self.indices]


def open_original(cache: ImageCache, i: int) -> Image.Image:
    """The original file behind cached image ``i`` (upright, RGB or L), e.g. to show a misclassified photo."""
    return load_image(cache.data_dir / cache.relpaths[i])
