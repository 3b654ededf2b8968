"""A synthetic stand-in for the Kaggle data (drawn muffins and chihuahuas; other classes as polygons) for
offline demos and tests; shared dots and brown tones keep it from being trivial. Seeded per (split, index).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from muffin_lib.config import CLASSES, SPLITS, SYNTHETIC_MARKER
from muffin_lib.errors import MuffinError

GENERATOR_VERSION = 2  # 2: built-in near-duplicate twins
_OVERSAMPLE = 2  # draw at 2x and downscale: cheap antialiasing


def is_synthetic(data_dir: str | os.PathLike) -> bool:
    """True when ``data_dir`` was made by ``make_synthetic_dataset`` (it holds the marker file)."""
    return (Path(data_dir) / SYNTHETIC_MARKER).is_file()


def _jitter(rng: np.random.Generator, rgb, amount: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.normal(0, amount), 0, 255)) for c in rgb)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    top, bottom = rng.uniform(40, 235, 3), rng.uniform(40, 235, 3)
    ramp = np.linspace(0, 1, size)[:, None, None]
    pixels = top * (1 - ramp) + bottom * ramp
    image = Image.fromarray(np.repeat(pixels, size, axis=1).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(0, 4)):  # clutter, sometimes brown and dotted like either class
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(0.05, 0.15) * size
        colour = _jitter(rng, (150, 100, 60), 60) if rng.random() < 0.25 else tuple(rng.integers(0, 255, 3))
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r * 0.7, x + r, y + r * 0.7), fill=colour)
        else:
            draw.rectangle((x - r, y - r, x + r * 1.5, y + r * 0.5), fill=colour)
    return image


def _draw_muffin(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float, s: float):
    cups = [(235, 230, 220), (200, 150, 160), (120, 80, 50), (170, 190, 210)]
    cup_colour = _jitter(rng, cups[rng.integers(4)], 20)
    top_w, bottom_w = s * rng.uniform(0.75, 0.95), s * rng.uniform(0.5, 0.7)
    cup_top, bottom = cy, cy + s * rng.uniform(0.4, 0.55)
    draw.polygon([(cx - top_w / 2, cup_top), (cx + top_w / 2, cup_top), (cx + bottom_w / 2, bottom),
                  (cx - bottom_w / 2, bottom)], fill=cup_colour)
    pleat, width = _jitter(rng, cup_colour, 40), max(1, int(s / 40))
    for t in np.linspace(-0.4, 0.4, int(rng.integers(4, 9))):
        draw.line([(cx + t * top_w, cup_top), (cx + t * bottom_w, bottom)], fill=pleat, width=width)
    dome_colour = _jitter(rng, (165, 105, 55), 30)
    dome_w, dome_h = top_w * rng.uniform(1.0, 1.3), s * rng.uniform(0.35, 0.55)
    dome = (cx - dome_w / 2, cup_top - dome_h, cx + dome_w / 2, cup_top + dome_h * 0.25)
    draw.ellipse(dome, fill=dome_colour)
    chips_y, rx, ry, radius = cup_top - dome_h * 0.4, dome_w * 0.38, dome_h * 0.4, s * 0.035
    for _ in range(int(rng.integers(2, 9))):  # chocolate chips
        angle, dist = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 1))
        x, y = cx + np.cos(angle) * dist * rx, chips_y + np.sin(angle) * dist * ry
        r = radius * rng.uniform(0.6, 1.4)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_jitter(rng, (50, 30, 20), 15))


def _draw_chihuahua(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float, s: float):
    fur = _jitter(rng, [(215, 175, 125), (235, 215, 185), (190, 140, 90), (90, 70, 55)][rng.integers(4)], 20)
    head_w, head_h = s * rng.uniform(0.7, 0.9), s * rng.uniform(0.6, 0.8)
    if rng.random() < 0.5:  # a body below the head, roughly where a muffin's cup would be
        body_w = head_w * rng.uniform(0.8, 1.1)
        body = (cx - body_w / 2, cy + head_h * 0.2, cx + body_w / 2, cy + head_h * 1.1)
        draw.ellipse(body, fill=_jitter(rng, fur, 15))
    for side in (-1, 1):
        if rng.random() < 0.1:  # an ear out of view
            continue
        base_x = cx + side * head_w * rng.uniform(0.15, 0.35)
        ear_h, ear_w = s * rng.uniform(0.3, 0.5), head_w * rng.uniform(0.2, 0.3)
        tip = (base_x + side * ear_w * rng.uniform(0.3, 1.0), cy - head_h / 2 - ear_h)
        ear_y = cy - head_h * 0.3
        draw.polygon([(base_x - ear_w, ear_y), (base_x + ear_w, ear_y), tip], fill=fur)
    draw.ellipse((cx - head_w / 2, cy - head_h / 2, cx + head_w / 2, cy + head_h / 2), fill=fur)
    eye_dx, eye_y = head_w * rng.uniform(0.17, 0.25), cy - head_h * rng.uniform(0.0, 0.15)
    eye_r = s * rng.uniform(0.045, 0.07)
    for x in (cx - eye_dx, cx + eye_dx):
        eye = (x - eye_r, eye_y - eye_r, x + eye_r, eye_y + eye_r)
        draw.ellipse(eye, fill=_jitter(rng, (30, 25, 20), 10))
    nose_y, nose_r = cy + head_h * rng.uniform(0.15, 0.3), s * rng.uniform(0.035, 0.055)
    draw.ellipse((cx - nose_r, nose_y - nose_r * 0.8, cx + nose_r, nose_y + nose_r * 0.8), fill=(35, 25, 25))


_SHAPE_COLOURS = [(40, 90, 200), (200, 40, 60), (40, 170, 70), (230, 200, 40), (140, 60, 180), (30, 190, 200)]


def _draw_shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float, s: float, index):
    """Class ``index`` of an N-class set: a regular polygon of 3 + index % 5 sides in colour ``index``."""
    sides = 3 + index % 5
    r, turn = s * rng.uniform(0.35, 0.5), rng.uniform(0, 2 * np.pi)
    points = [(cx + r * np.cos(turn + 2 * np.pi * k / sides), cy + r * np.sin(turn + 2 * np.pi * k / sides))
              for k in range(sides)]
    draw.polygon(points, fill=_jitter(rng, _SHAPE_COLOURS[index % len(_SHAPE_COLOURS)], 25))


def make_image(label: int, rng: np.random.Generator, image_size: int, classes=CLASSES) -> Image.Image:
    """One synthetic photo of class ``classes[label]``."""
    size = image_size * _OVERSAMPLE
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    s = size * rng.uniform(0.5, 0.8)
    cx, cy = size * rng.uniform(0.3, 0.7, 2)
    name = classes[label]
    if name == "muffin":
        _draw_muffin(draw, rng, cx, cy, s)
    elif name == "chihuahua":
        _draw_chihuahua(draw, rng, cx, cy, s)
    else:
        _draw_shape(draw, rng, cx, cy, s, label)
    fill = image.getpixel((0, 0))
    image = image.rotate(rng.uniform(-25, 25), resample=Image.Resampling.BILINEAR, fillcolor=fill)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5)))
    image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.7, 1.2) + rng.uniform(-30, 30)
    pixels += rng.normal(0, rng.uniform(2, 12), pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image.convert("L") if rng.random() < 0.15 else image


def twin_variant(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A near-duplicate like the Kaggle data's twins: trimmed by 0-4 %, resized, re-encoded as JPEG."""
    width, height = image.size
    left, top = (int(width * rng.uniform(0.0, 0.04)), int(height * rng.uniform(0.0, 0.04)))
    trimmed = image.crop((left, top, width, height))
    scale = rng.uniform(0.8, 1.25)
    resized = trimmed.resize((max(8, round(trimmed.width * scale)), max(8, round(trimmed.height * scale))))
    buffer = io.BytesIO()
    resized.save(buffer, "JPEG", quality=int(rng.integers(60, 76)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _twin_source(split: str, i: int, n_train: int, n_classes: int = 2) -> int | None:
    """Which earlier training image of its class (i % n_classes) image ``i`` of ``split`` copies, or None:
    about one test image in ten has a twin in train, and one training image in sixteen."""
    if split == "test" and i % 10 == 3 and n_train >= n_classes:
        source = (7 * i) % n_train
        if n_classes == 2:
            return source if source % 2 == i % 2 else (source + 1 if source + 1 < n_train else source - 1)
        source += (i - source) % n_classes  # the next training image of image i's class
        return source if source < n_train else source - n_classes
    if split == "train" and i % 16 == 5 and i >= n_classes:
        return i - n_classes
    return None


def make_synthetic_dataset(
    data_dir: str | os.PathLike, *, n_train: int = 240, n_test: int = 60, image_size: int = 96, seed: int = 0,
    classes=CLASSES,
) -> Path:
    """Write a seeded, balanced synthetic dataset in the Kaggle layout (JPEGs) and the marker file into a new
    (or empty) ``data_dir``, built beside it and renamed into place; returns data_dir."""
    classes = tuple(sorted(name.lower() for name in classes))
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise MuffinError(f"classes must be two or more different names, got {classes!r}")
    data_dir = Path(data_dir)
    if data_dir.exists() and any(data_dir.iterdir()):
        raise MuffinError(f"{data_dir} is not empty; the synthetic dataset is only written into a new "
                          "folder. Choose another --data-dir or delete that folder.")
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.synthetic-", dir=data_dir.parent))
    try:
        counts, n_twins, train_images = {"train": n_train, "test": n_test}, {"train": 0, "test": 0}, []
        for split_index, split in enumerate(SPLITS):
            for name in classes:
                (staging / split / name).mkdir(parents=True)
            for i in range(counts[split]):
                rng = np.random.default_rng([seed, split_index, i])
                label = i % len(classes)
                source = _twin_source(split, i, n_train, len(classes))
                if source is not None:  # a near-duplicate of an earlier training image, as in the Kaggle data
                    image = twin_variant(train_images[source], rng)
                    n_twins[split] += 1
                else:
                    image = make_image(label, rng, image_size, classes)
                if split == "train":
                    train_images.append(image)
                image.save(staging / split / classes[label] / f"synthetic_{i:05d}.jpg", quality=90)
        marker = {
            "synthetic": True, "generator": f"muffin_lib.data.synthetic v{GENERATOR_VERSION}", "seed": seed,
            "counts": counts, "near_duplicates": n_twins, "image_size": image_size,
            **({} if classes == CLASSES else {"classes": list(classes)}),
            "note": "Synthetic stand-in (drawn muffins and chihuahuas), NOT the Kaggle photos. Results on it "
            "say nothing about real images. Get the real data with "
            "`python -m muffin_lib fetch --source kaggle`.",
        }
        (staging / SYNTHETIC_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if data_dir.exists():
            data_dir.rmdir()
        os.replace(staging, data_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return data_dir
