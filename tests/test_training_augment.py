"""augment_batch: per-sample randomness, identity when off, device/dtype kept, geometry right."""

from __future__ import annotations

import pytest
import torch

from muffin_lib.training.augment import AUGMENT_PRESETS, augment_batch


def _asymmetric_batch(n: int = 32, size: int = 16) -> torch.Tensor:
    image = torch.zeros(1, size, size)
    image[:, :, : size // 4] = 1.0  # a bright band on the left
    return image.expand(n, -1, -1, -1).clone()


def test_flip_is_chosen_per_sample():
    x = _asymmetric_batch()
    out = augment_batch(x, generator=torch.Generator().manual_seed(0), hflip=True, max_rotation_deg=0.0)
    flipped = torch.flip(x, dims=[3])
    same = [torch.allclose(o, i, atol=1e-5) for o, i in zip(out, x, strict=True)]
    mirrored = [torch.allclose(o, f, atol=1e-5) for o, f in zip(out, flipped, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))  # exactly one of the two, pixel for pixel
    assert 4 <= sum(mirrored) <= 28


def test_rotation_and_crop_differ_per_sample_and_are_seeded():
    x = torch.rand(8, 3, 32, 32)
    kwargs = {"hflip": False, "max_rotation_deg": 20.0, "random_resized_crop": True}
    out = augment_batch(x, generator=torch.Generator().manual_seed(3), **kwargs)
    again = augment_batch(x, generator=torch.Generator().manual_seed(3), **kwargs)
    assert torch.equal(out, again)
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[0], x[0])


def test_identity_when_disabled():
    x = torch.rand(4, 1, 16, 16)
    assert augment_batch(x, **AUGMENT_PRESETS["none"]) is x


def test_small_rotation_keeps_the_image():
    # Reflection padding, no black corners; a 10 degree turn moves pixels only a little.
    x = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(4, 1, 64, 64).clone()
    out = augment_batch(x, generator=torch.Generator().manual_seed(0), hflip=False, max_rotation_deg=10.0)
    assert out.min() >= -1e-6 and (out - x).abs().mean() < 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtype_and_device_kept_on_cpu(dtype):
    x = torch.rand(4, 3, 32, 32).to(dtype)
    out = augment_batch(x, generator=torch.Generator().manual_seed(0), random_resized_crop=True)
    assert out.dtype == dtype and out.device == x.device and out.shape == x.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtype_and_device_kept_on_cuda(dtype):
    x = torch.rand(4, 3, 32, 32, device="cuda").to(dtype)
    out = augment_batch(x, generator=torch.Generator(device="cuda").manual_seed(0), random_resized_crop=True)
    assert out.dtype == dtype and out.device == x.device
    out = augment_batch(x)  # default generator on the tensor's device
    assert out.device == x.device
