"""imageio: every odd image kind decodes to upright RGB/L and preprocesses to the right tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from muffin_lib.data.imageio import UnreadableImage, inspect_image, load_image, preprocess_image
from muffin_lib.errors import MuffinError


def _save(path, image, **kwargs):
    image.save(path, **kwargs)
    return path


def test_cmyk_jpeg_becomes_rgb_with_the_right_colour(tmp_path):
    path = _save(tmp_path / "cmyk.jpg", Image.new("CMYK", (20, 10), (0, 255, 255, 0)), quality=95)
    image = load_image(path)
    assert image.mode == "RGB"
    red, green, blue = image.getpixel((5, 5))
    assert red > 200 and green < 60 and blue < 60


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.full((10, 12), 65535 // 2, dtype=np.uint16)
    path = _save(tmp_path / "deep.png", Image.fromarray(values))
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    image = load_image(path)
    assert image.mode == "L" and image.getpixel((0, 0)) == 127


def test_palette_transparency_and_la_are_composited_on_white(tmp_path):
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((1, 1), 1)
    pal_path = _save(tmp_path / "pal.png", palette, transparency=0)
    image = load_image(pal_path)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent red -> white
    assert image.getpixel((1, 1)) == (0, 0, 255)

    la_path = _save(tmp_path / "la.png", Image.new("LA", (4, 4), (0, 0)))
    assert load_image(la_path).mode == "L" and load_image(la_path).getpixel((0, 0)) == 255
    rgba_path = _save(tmp_path / "rgba.png", Image.new("RGBA", (4, 4), (10, 20, 30, 255)))
    assert load_image(rgba_path).getpixel((0, 0)) == (10, 20, 30)


def test_one_bit_and_greyscale_stay_single_channel(tmp_path):
    one = _save(tmp_path / "one.png", Image.new("1", (5, 5), 1))
    grey = _save(tmp_path / "grey.jpg", Image.new("L", (5, 5), 90))
    assert load_image(one).mode == "L" and load_image(one).getpixel((2, 2)) == 255
    assert load_image(grey).mode == "L"


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (60, 30), (200, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = _save(tmp_path / "rotated.jpg", image, exif=exif)
    assert load_image(path).size == (30, 60)
    info = inspect_image(str(path))
    assert (info["width"], info["height"]) == (30, 60)


@pytest.mark.parametrize("color_mode, channels", [("grayscale", 1), ("rgb", 3)])
@pytest.mark.parametrize("size", [(1, 1), (50, 20), (20, 50), (600, 400)])
def test_preprocess_shape_and_dtype(tmp_path, color_mode, channels, size):
    path = _save(tmp_path / "x.jpg", Image.new("RGB", size, (100, 150, 200)))
    tensor = preprocess_image(path, 32, color_mode)
    assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == (channels, 32, 32)


def test_preprocess_centre_crops_the_longer_side(tmp_path):
    # left third black, middle white, right third black: the centre crop of a 3:1 image is all white
    pixels = np.zeros((100, 300), dtype=np.uint8)
    pixels[:, 100:200] = 255
    path = _save(tmp_path / "wide.png", Image.fromarray(pixels))
    tensor = preprocess_image(path, 20, "grayscale")
    assert tensor[:, :, 3:-3].min() >= 250


def test_preprocess_accepts_a_pil_image_and_matches_the_file(tmp_path):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8))
    path = _save(tmp_path / "noise.png", image)
    assert torch.equal(preprocess_image(image, 24, "rgb"), preprocess_image(path, 24, "rgb"))


def test_large_jpeg_is_downscaled_fast(tmp_path):
    gradient = np.broadcast_to(np.linspace(0, 255, 6000, dtype=np.uint8), (4000, 6000))
    image = Image.fromarray(np.ascontiguousarray(gradient)).convert("RGB")
    path = _save(tmp_path / "huge.jpg", image, quality=60)
    assert tuple(preprocess_image(path, 64, "rgb").shape) == (3, 64, 64)


def test_undecodable_files_raise_unreadable_image_naming_file_and_reason(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    good = _save(tmp_path / "good.jpg", Image.fromarray(noise), quality=95)
    data = good.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("my shopping list\n")
    expected = {"truncated.jpg": "truncated", "empty.jpg": "empty", "notes.jpg": "text",
                "missing.jpg": "no such"}
    for name, reason in expected.items():
        with pytest.raises(UnreadableImage) as info:
            preprocess_image(tmp_path / name, 32, "rgb")
        assert isinstance(info.value, MuffinError)
        assert name in str(info.value) and reason in str(info.value)
