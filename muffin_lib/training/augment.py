"""Random flips, rotations and crops for a whole batch at once, on its own device: one 2x3 affine matrix per
sample, applied by a single ``affine_grid`` + ``grid_sample`` (not 64 trips through PIL); pixels from outside
the image are reflected, never black corners the model could learn from."""

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


def augment_batch(x: torch.Tensor, *, generator: torch.Generator | None = None, hflip: bool = True,
                  max_rotation_deg: float = 10.0, random_resized_crop: bool = False,
                  crop_scale: tuple[float, float] = (0.7, 1.0),
                  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3), padding_mode: str = "reflection"
                  ) -> torch.Tensor:
    """Randomly flip (p=0.5), rotate (+-``max_rotation_deg``) and crop (like RandomResizedCrop) each image of
    float N x C x H x W ``x``, in its shape, dtype and device (``x`` itself with every transform off)."""
    if not (hflip or max_rotation_deg or random_resized_crop):
        return x
    n, _, height, width = x.shape
    rand_device = generator.device if generator is not None else x.device

    def uniform(low: float, high: float) -> torch.Tensor:
        u = torch.rand(n, generator=generator, device=rand_device, dtype=torch.float32)
        return (low + (high - low) * u).to(x.device)

    ones, zeros = torch.ones(n, device=x.device), torch.zeros(n, device=x.device)
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
    theta = torch.stack([torch.stack([scale_x * cos * flip, -scale_x * sin * aspect, shift_x], dim=1),
                         torch.stack([scale_y * sin * flip / aspect, scale_y * cos, shift_y], dim=1)], dim=1)
    # Sample in float32: a bf16 grid is off by up to a pixel at 256 px.
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    grid = F.affine_grid(theta.to(work.dtype), list(work.shape), align_corners=False)
    out = F.grid_sample(work, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return out.to(x.dtype)

