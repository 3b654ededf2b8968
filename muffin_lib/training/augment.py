"""Random flips, rotations and crops for a whole batch at once, on the batch's own device.

Each sample gets its own random parameters; they are composed into one 2x3 affine matrix per sample
and applied with a single ``affine_grid`` + ``grid_sample`` call, so a batch of 64 costs one kernel
pair instead of 64 trips through PIL. Pixels that come from outside the image are filled by
reflection (or by repeating the border), never by black corners the model could learn from.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# What ``TrainConfig.augment`` names mean.
AUGMENT_PRESETS: dict[str, dict] = {
    "none": {"hflip": False, "max_rotation_deg": 0.0, "random_resized_crop": False},
    "flip_rotate": {"hflip": True, "max_rotation_deg": 10.0, "random_resized_crop": False},
    "flip_rotate_crop": {"hflip": True, "max_rotation_deg": 10.0, "random_resized_crop": True},
}


def augment_batch(
    x: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    hflip: bool = True,
    max_rotation_deg: float = 10.0,
    random_resized_crop: bool = False,
    crop_scale: tuple[float, float] = (0.7, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    padding_mode: str = "reflection",
) -> torch.Tensor:
    """Randomly flip (p=0.5), rotate (uniform in +-``max_rotation_deg``) and crop each image of ``x``.

    ``x`` is a float batch N x C x H x W (float32, bfloat16 or float16, any device); the result has the
    same shape, dtype and device. ``random_resized_crop`` zooms into a random window covering a
    ``crop_scale`` fraction of the area with aspect ratio in ``crop_ratio`` (like torchvision's
    RandomResizedCrop, without leaving the image). Random numbers come from ``generator`` (on any device).
    With every transform disabled, ``x`` itself is returned.
    """
    if not (hflip or max_rotation_deg or random_resized_crop):
        return x
    n, _, height, width = x.shape
    rand_device = generator.device if generator is not None else x.device

    def uniform(low: float, high: float) -> torch.Tensor:
        u = torch.rand(n, generator=generator, device=rand_device, dtype=torch.float32)
        return (low + (high - low) * u).to(x.device)

    ones = torch.ones(n, device=x.device)
    zeros = torch.zeros(n, device=x.device)
    # affine_grid maps output coordinates in [-1, 1] to input coordinates: in = A @ out + t.
    flip = torch.where(uniform(0.0, 1.0) < 0.5, -ones, ones) if hflip else ones
    angle = uniform(-max_rotation_deg, max_rotation_deg) * (math.pi / 180.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    if random_resized_crop:
        area = uniform(*crop_scale)
        log_ratio = uniform(math.log(crop_ratio[0]), math.log(crop_ratio[1]))
        scale_x = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
        scale_y = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
        shift_x = uniform(-1.0, 1.0) * (1.0 - scale_x)
        shift_y = uniform(-1.0, 1.0) * (1.0 - scale_y)
    else:
        scale_x = scale_y = ones
        shift_x = shift_y = zeros
    # Rotation in pixel space, expressed in normalised coordinates (exact for non-square images too).
    aspect = height / width
    theta = torch.stack(
        [
            torch.stack([scale_x * cos * flip, -scale_x * sin * aspect, shift_x], dim=1),
            torch.stack([scale_y * sin * flip / aspect, scale_y * cos, shift_y], dim=1),
        ],
        dim=1,
    )
    # Sample in float32: a bf16 grid is off by up to a pixel at 256 px.
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    grid = F.affine_grid(theta.to(work.dtype), list(work.shape), align_corners=False)
    out = F.grid_sample(work, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return out.to(x.dtype)

