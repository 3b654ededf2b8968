"""One decoder for every image file and the one preprocessing, so a user's photo is treated like a training
image. Torch is imported only inside ``preprocess_image``: the worker processes start faster without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from muffin_lib.config import channels_for
from muffin_lib.errors import MuffinError
from muffin_lib.pool import default_workers, process_pool
from muffin_lib.progress import progress_bar

# Part of the cache key: bump when preprocessing changes so that old caches are rebuilt.
PREPROCESS_VERSION = 1
RESAMPLE = Image.Resampling.BICUBIC
# Pillow's decompression-bomb guard stays on; a truncated file must fail, not be padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_EXIF_ORIENTATION = 0x0112
_ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_SAME_FORMAT = {"MPO": "JPEG"}  # multi-picture JPEGs from phones are JPEGs


class UnreadableImage(MuffinError):
    """A file that is not a decodable image; says which file and why."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path, self.reason = None if path is None else Path(path), reason
        where = "image" if path is None else str(path)
        super().__init__(f"cannot read {where}: {reason}")


def describe_decode_error(error: BaseException, data: bytes | None = None) -> str:
    """A short human reason for a Pillow failure (used for scan rejections and UnreadableImage)."""
    if data is not None and len(data) == 0:
        return "empty file (0 bytes)"
    if isinstance(error, Image.DecompressionBombError):
        return f"image too large for Pillow's decompression-bomb guard ({error})"
    if isinstance(error, UnidentifiedImageError):
        if data is not None and _looks_like_text(data):
            head = (data[:60].decode("utf-8", errors="replace").strip().splitlines() or [""])[0][:30]
            return f"not an image: the file holds text (starts with {head!r})"
        return "not an image: Pillow does not recognise the content as JPEG, PNG or another image format"
    message = str(error) or type(error).__name__
    if "truncated" in message or isinstance(error, (EOFError, SyntaxError)):
        return f"truncated or corrupt image data ({message})"
    return f"undecodable image data ({type(error).__name__}: {message})"


def _looks_like_text(data: bytes) -> bool:
    text = data[:512].decode("utf-8", errors="ignore")  # "ignore": a character cut at byte 512
    return len(text) >= min(len(data), 512) // 2 and all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def _open(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        # Oversized-but-allowed images only warn; the hard limit still raises DecompressionBombError.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def _read(path: Path) -> bytes:
    """The file's bytes (decoding from memory leaves no file handle open when Pillow fails)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UnreadableImage(path, "no such file") from None
    except OSError as error:
        raise UnreadableImage(path, f"cannot read the file ({error.strerror or error})") from None


def _to_rgb_or_l(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to "RGB" or "L"; transparency is composited onto white."""
    mode = image.mode
    transparent = "transparency" in image.info
    if mode in ("RGB", "L") and not transparent:
        return image
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_high_depth_to_uint8(image, mode))
    if mode in ("L", "LA", "La"):
        return _on_white(image.convert("LA"), "L")
    if mode == "P" and not transparent:
        return image.convert("L" if _palette_is_grey(image) else "RGB")
    if mode in ("RGB", "RGBA", "RGBa", "P", "PA"):
        return _on_white(image.convert("RGBA"), "RGB")
    # CMYK (Pillow undoes Adobe's inversion), YCbCr, LAB, HSV
    return image.convert("RGB")


def _on_white(image_with_alpha: Image.Image, mode: str) -> Image.Image:
    background = Image.new(mode, image_with_alpha.size, 255 if mode == "L" else (255, 255, 255))
    background.paste(image_with_alpha.convert(mode), mask=image_with_alpha.getchannel("A"))
    return background


def _palette_is_grey(image: Image.Image) -> bool:
    palette = image.getpalette() or []
    triples = np.asarray(palette[: len(palette) // 3 * 3]).reshape(-1, 3)
    return bool(len(triples)) and bool(np.all(triples == triples[:, :1]))


def _high_depth_to_uint8(image: Image.Image, mode: str) -> np.ndarray:
    """16-bit and 32-bit integer greyscale -> 0..255 by range; float images in [0, 1] are scaled by 255."""
    values = np.asarray(image, dtype=np.float64)
    top = float(values.max()) if values.size else 0.0
    if mode == "F":
        scale = 255.0 if top <= 1.0 else 1.0
    elif mode.startswith("I;16") or top > 255:
        scale = 255.0 / 65535.0 if top <= 65535 else 255.0 / top
    else:
        scale = 1.0
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


def _decode(path: Path, draft_mode: str | None, draft_size: int | None) -> Image.Image:
    """Read, optionally JPEG-draft, fully decode and EXIF-rotate the image at ``path``."""
    data = _read(path)
    try:
        image = _open(data)
        if draft_size is not None and image.format in ("JPEG", "MPO"):
            # DCT-domain downscaling: decodes at 1/2, 1/4 or 1/8 size, never below draft_size per side.
            image.draft(draft_mode, (draft_size, draft_size))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise UnreadableImage(path, describe_decode_error(error, data)) from None
    return image


def load_image(path: str | os.PathLike, *, draft_mode: str | None = None, draft_size: int | None = None):
    """The image at ``path``, upright (EXIF), as "RGB" or "L"; ``draft_size`` JPEG-drafts it (thumbnails)."""
    return _to_rgb_or_l(_decode(Path(path), draft_mode, draft_size))


def _square(image: Image.Image, image_size: int) -> Image.Image:
    """Shorter side -> image_size, centre crop; done as one antialiased resize of the centre box."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    return image.resize((image_size, image_size), RESAMPLE, box=box, reducing_gap=3.0)


def preprocess_array(path_or_image, image_size: int, color_mode: str) -> np.ndarray:
    """Like ``preprocess_image`` but returns a numpy uint8 array C x S x S (no torch needed)."""
    channels = channels_for(color_mode)
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if isinstance(path_or_image, Image.Image):
        image = _to_rgb_or_l(ImageOps.exif_transpose(path_or_image))
    else:
        draft_mode = "L" if channels == 1 else "RGB"
        image = _to_rgb_or_l(_decode(Path(path_or_image), draft_mode, image_size))
    image = image.convert("L" if channels == 1 else "RGB")
    array = np.asarray(_square(image, image_size), dtype=np.uint8)
    return array[np.newaxis].copy() if channels == 1 else np.ascontiguousarray(array.transpose(2, 0, 1))


def preprocess_image(path_or_image, image_size: int, color_mode: str):
    """A file or PIL image -> torch uint8 tensor C x S x S (C = 1 for "grayscale", 3 for "rgb")."""
    import torch

    return torch.from_numpy(preprocess_array(path_or_image, image_size, color_mode))


def preprocess_chunk(paths: list[str], image_size: int, color_mode: str) -> tuple[np.ndarray, list]:
    """Worker job of the cache: a stacked N x C x S x S array and (index, reason) for files that failed."""
    out = np.zeros((len(paths), channels_for(color_mode), image_size, image_size), dtype=np.uint8)
    failures = []
    for i, path in enumerate(paths):
        try:
            out[i] = preprocess_array(path, image_size, color_mode)
        except UnreadableImage as error:
            failures.append((i, error.reason))
    return out, failures


def inspect_image(path: str) -> dict:
    """Worker job of the scan: hash and fully decode (JPEG drafted) to validate; ``{"ok": False, "reason"}``.
    Width and height are as displayed (after EXIF rotation); mode is the file's own Pillow mode."""
    try:
        data = _read(Path(path))
    except UnreadableImage as error:
        return {"ok": False, "reason": error.reason}
    if not data:
        return {"ok": False, "reason": "empty file (0 bytes)"}
    try:
        image = _open(data)
        mode, image_format = image.mode, image.format
        width, height = image.size
        orientation = image.getexif().get(_EXIF_ORIENTATION)
        if image.format in ("JPEG", "MPO"):
            # Entropy decoding still reads the whole stream, so truncation is caught at 1/8 scale too.
            image.draft(None, (max(1, width // 8), max(1, height // 8)))
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        return {"ok": False, "reason": describe_decode_error(error, data)}
    if orientation in _ROTATED_ORIENTATIONS:
        width, height = height, width
    return {"ok": True, "width": width, "height": height, "mode": mode,
            "format": _SAME_FORMAT.get(image_format, image_format), "nbytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def map_images(job, items: list, *, desc: str, progress: bool, pool_from: int, workers=None, sizes=None):
    """Yield ``job(item)`` in order, in a process pool for ``pool_from`` items or more, under a progress bar
    that counts images (``sizes``: the images each item holds; default one)."""
    workers = default_workers() if workers is None else max(1, workers)
    sizes = [1] * len(items) if sizes is None else sizes
    pooled = workers > 1 and len(items) >= pool_from
    with progress_bar(total=sum(sizes), enabled=progress, desc=desc, unit="img") as bar, (
        process_pool(workers) if pooled else contextlib.nullcontext()
    ) as pool:
        chunk = max(1, min(64, len(items) // (workers * 8)))
        results = pool.map(job, items, chunksize=chunk) if pooled else map(job, items)
        for result, size in zip(results, sizes, strict=True):
            yield result
            bar.update(size)
