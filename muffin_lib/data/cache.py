"""Decode every image once into a uint8 tensor on disk (``load_images``); later runs load it memory-mapped.

The file is named by a hash of the files' contents and the settings, so any change to either gives a rebuild.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from muffin_lib.config import CLASSES, COLOR_MODES, SPLITS, WorkDir, channels_for
from muffin_lib.data.imageio import PREPROCESS_VERSION, map_images, preprocess_chunk
from muffin_lib.data.scan import ImageRecord, ScanResult, fingerprint_records, scan_dataset
from muffin_lib.errors import MuffinError
from muffin_lib.files import write_atomic
from muffin_lib.text import plural

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_CHUNK = 64  # images per worker job
_POOL_CHUNKS = 3  # fewer chunks than this are faster to decode in this process


@dataclass
class ImageCache:
    images: torch.Tensor  # uint8, N x C x H x W, in records_for(split) order
    labels: torch.Tensor  # int64, N; index into class_names
    relpaths: list[str]
    data_dir: Path
    split: str
    image_size: int
    color_mode: str
    key: str
    fingerprint: str  # the same as ScanResult.fingerprint(split): what SplitPlans are checked against
    synthetic: bool
    path: Path | None = None  # the .pt file
    class_names: tuple[str, ...] = CLASSES  # label i = class_names[i] (the sorted class folders of train/)

    def __len__(self) -> int:
        return len(self.relpaths)

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.labels, minlength=len(self.class_names)).tolist()
        return dict(zip(self.class_names, counts, strict=True))

    def __repr__(self) -> str:
        kind = ", SYNTHETIC" if self.synthetic else ""
        shape = tuple(self.images.shape[1:])
        counts = self.class_counts()
        return f"ImageCache({self.split}: {len(self)} images {shape} {self.color_mode}, {counts}{kind})"


def cache_key(records: list[ImageRecord], image_size: int, color_mode: str) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION}/p{PREPROCESS_VERSION}/{image_size}/{color_mode}\n".encode())
    for record in records:
        digest.update(f"{record.relpath}\t{record.label}\t{record.nbytes}\t{record.sha256}\n".encode())
    return digest.hexdigest()


def _check_settings(split: str, image_size: int, color_mode: str) -> None:
    if split not in SPLITS:
        raise MuffinError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if color_mode not in COLOR_MODES:
        raise MuffinError(f"color_mode must be one of {', '.join(COLOR_MODES)}; got {color_mode!r}")
    if not isinstance(image_size, int) or image_size < 8:
        raise MuffinError(f"image_size must be a whole number of pixels >= 8; got {image_size!r}")


def _load(path: Path, key: str) -> dict | None:
    try:
        payload = torch.load(path, mmap=True, weights_only=True)
    except Exception as error:  # a cut-off or foreign file is rebuilt, not fatal
        log.warning("cache file %s is unreadable (%s); rebuilding it", path, error)
        return None
    return payload if payload.get("key") == key and payload.get("version") == CACHE_VERSION else None


def _decode_all(records: list[ImageRecord], image_size: int, color_mode: str, progress: bool) -> torch.Tensor:
    images = torch.empty((len(records), channels_for(color_mode), image_size, image_size), dtype=torch.uint8)
    chunks = [[str(r.path) for r in records[i : i + _CHUNK]] for i in range(0, len(records), _CHUNK)]
    job = partial(preprocess_chunk, image_size=image_size, color_mode=color_mode)
    failures = []
    desc = f"decoding {records[0].split} images ({image_size} px {color_mode})"
    sizes = [len(chunk) for chunk in chunks]
    results = map_images(job, chunks, desc=desc, progress=progress, pool_from=_POOL_CHUNKS, sizes=sizes)
    for start, (array, chunk_failures) in zip(range(0, len(records), _CHUNK), results, strict=True):
        images[start : start + len(array)] = torch.from_numpy(array)
        failures.extend((records[start + i], reason) for i, reason in chunk_failures)
    if failures:
        listed = "; ".join(f"{record.path}: {reason}" for record, reason in failures[:10])
        raise MuffinError(
            f"{plural(len(failures), 'image')} could not be decoded although the scan accepted them "
            f"(changed since?): {listed}. Run `python -m muffin_lib audit` on the data folder and fix or "
            "remove them."
        )
    return images


def _save(cache: ImageCache, prefix: str, started: float) -> None:
    """Write the cache file and remove older ones of the same data folder and settings (never read again)."""
    payload = {
        "version": CACHE_VERSION, "key": cache.key, "images": cache.images, "labels": cache.labels,
        "relpaths": cache.relpaths, "data_dir": str(cache.data_dir), "split": cache.split,
        "image_size": cache.image_size, "color_mode": cache.color_mode, "fingerprint": cache.fingerprint,
        "synthetic": cache.synthetic, "class_names": list(cache.class_names),  # metadata: relpaths name them
    }
    write_atomic(cache.path, lambda temp: torch.save(payload, temp))
    for stale in cache.path.parent.glob(f"{prefix}*.pt"):
        if stale != cache.path:
            stale.unlink(missing_ok=True)
            log.info("removed stale cache %s", stale.name)
    size_mb = cache.path.stat().st_size / 2**20
    log.info("cache built: %s (%d images, %.0f MiB, %.1f s)", cache.path.name, len(cache), size_mb,
             time.perf_counter() - started)


def build_cache(scan: ScanResult, split: str, image_size: int, color_mode: str, work_dir, *, progress=True):
    """The images of ``split`` preprocessed (``imageio.preprocess_image``) into a cached uint8 tensor."""
    records = scan.records_for(split)
    key = cache_key(records, image_size, color_mode)
    source = hashlib.sha256(str(scan.data_dir).encode()).hexdigest()[:8]
    prefix = f"{split}-{color_mode}-{image_size}px-{source}-"
    path = WorkDir(work_dir).cache_dir / f"{prefix}{key[:16]}.pt"
    started = time.perf_counter()
    payload = _load(path, key) if path.is_file() else None
    if payload is not None:
        seconds = time.perf_counter() - started
        log.info("cache hit: %s (%d images, loaded in %.2f s)", path.name, len(records), seconds)
        images = payload["images"]
    else:
        images = _decode_all(records, image_size, color_mode, progress)
    labels = torch.tensor([r.label for r in records], dtype=torch.int64)
    relpaths = [r.relpath for r in records]
    cache = ImageCache(images, labels, relpaths, scan.data_dir, split, image_size, color_mode, key,
                       fingerprint_records(records), scan.synthetic, path, tuple(scan.class_names))
    if payload is None:
        _save(cache, prefix, started)
    return cache


def load_images(
    data_dir: str | os.PathLike, work_dir: str | os.PathLike, split: str = "train", image_size: int = 128,
    color_mode: str = "grayscale", *, progress: bool = True,
) -> ImageCache:
    """Scan ``data_dir`` and return the cached images of ``split`` (building the cache when needed)."""
    _check_settings(split, image_size, color_mode)
    scan = scan_dataset(data_dir, work_dir, progress=progress)
    for rejected in scan.rejected:
        log.warning("skipping %s: %s", rejected.path, rejected.reason)
    if not scan.records_for(split):
        raise MuffinError(
            f"{scan.data_dir} has no valid images in {split}/ (expected "
            f"{' and '.join(f'{split}/{name}/' for name in scan.class_names)} with .jpg/.png files). "
            f"Run `python -m muffin_lib audit {scan.data_dir}`."
        )
    return build_cache(scan, split, image_size, color_mode, work_dir, progress=progress)
