"""Decode every image once into a uint8 tensor on disk; later runs load it in a moment.

``load_images`` is the entry point: scan (bad files are skipped with a warning), then ``build_cache``.
The cache file is named by a hash of the files' contents (relative path, label, size, sha256), the
image size, the colour mode and the preprocessing version, so any change to the files or settings
gives a new file and a rebuild; a hit is loaded memory-mapped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import torch

from muffin_lib.config import CLASSES, COLOR_MODES, SPLITS, WorkDir, channels_for
from muffin_lib.data.imageio import PREPROCESS_VERSION, preprocess_chunk
from muffin_lib.data.scan import ImageRecord, fingerprint_records, scan_dataset
from muffin_lib.errors import MuffinError
from muffin_lib.files import write_atomic
from muffin_lib.pool import default_workers, process_pool
from muffin_lib.progress import progress_bar
from muffin_lib.text import plural

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_CHUNK = 64  # images per worker job
_POOL_THRESHOLD = 2 * _CHUNK


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
        return (
            f"ImageCache({self.split}: {len(self)} images {tuple(self.images.shape[1:])} {self.color_mode}, "
            f"{self.class_counts()}{kind})"
        )


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
    if payload.get("key") != key or payload.get("version") != CACHE_VERSION:
        return None
    return payload


def _decode_all(records: list[ImageRecord], image_size: int, color_mode: str, progress: bool, desc: str):
    channels = channels_for(color_mode)
    images = torch.empty((len(records), channels, image_size, image_size), dtype=torch.uint8)
    chunks = [[str(r.path) for r in records[i : i + _CHUNK]] for i in range(0, len(records), _CHUNK)]
    failures = []
    workers = default_workers()
    with progress_bar(total=len(records), enabled=progress, desc=desc, unit="img") as bar:

        def store(start: int, result) -> None:
            array, chunk_failures = result
            images[start : start + len(array)] = torch.from_numpy(array)
            failures.extend((records[start + i], reason) for i, reason in chunk_failures)
            bar.update(len(array))

        starts = range(0, len(records), _CHUNK)
        if workers > 1 and len(records) >= _POOL_THRESHOLD:
            with process_pool(workers) as pool:
                jobs = pool.map(preprocess_chunk, chunks, repeat(image_size), repeat(color_mode))
                for start, result in zip(starts, jobs, strict=True):
                    store(start, result)
        else:
            for start, chunk in zip(starts, chunks, strict=True):
                store(start, preprocess_chunk(chunk, image_size, color_mode))
    if failures:
        listed = "; ".join(f"{record.path}: {reason}" for record, reason in failures[:10])
        raise MuffinError(
            f"{plural(len(failures), 'image')} could not be decoded although the scan accepted them "
            f"(changed since?): "
            f"{listed}. Run `python -m muffin_lib audit` on the data folder and fix or remove them."
        )
    return images


def build_cache(
    records: list[ImageRecord],
    *,
    data_dir: str | os.PathLike,
    split: str,
    image_size: int,
    color_mode: str,
    work_dir: str | os.PathLike,
    progress: bool = True,
    synthetic: bool = False,
    class_names: tuple[str, ...] = CLASSES,
) -> ImageCache:
    """Decode ``records`` with ``imageio.preprocess_image`` into a cached uint8 tensor (or load the cache)."""
    _check_settings(split, image_size, color_mode)
    if not records:
        raise MuffinError(f"no valid images in the {split} split of {data_dir}; nothing to cache")
    records = sorted(records, key=lambda r: r.relpath)
    data_dir = Path(data_dir).expanduser().resolve()
    key = cache_key(records, image_size, color_mode)
    fingerprint = fingerprint_records(records)
    source = hashlib.sha256(str(data_dir).encode()).hexdigest()[:8]
    prefix = f"{split}-{color_mode}-{image_size}px-{source}-"
    cache_dir = WorkDir(work_dir).cache_dir
    path = cache_dir / f"{prefix}{key[:16]}.pt"
    labels = torch.tensor([r.label for r in records], dtype=torch.int64)
    relpaths = [r.relpath for r in records]

    class_names = tuple(class_names)

    def result(images: torch.Tensor) -> ImageCache:
        return ImageCache(images, labels, relpaths, data_dir, split, image_size, color_mode, key, fingerprint,
                          synthetic, path, class_names)

    started = time.perf_counter()
    if path.is_file():
        payload = _load(path, key)
        if payload is not None:
            log.info("cache hit: %s (%d images, loaded in %.2f s)", path.name, len(records),
                     time.perf_counter() - started)
            return result(payload["images"])

    images = _decode_all(records, image_size, color_mode, progress,
                         desc=f"decoding {split} images ({image_size} px {color_mode})")
    payload = {
        "version": CACHE_VERSION,
        "key": key,
        "images": images,
        "labels": labels,
        "relpaths": relpaths,
        "data_dir": str(data_dir),
        "split": split,
        "image_size": image_size,
        "color_mode": color_mode,
        "fingerprint": fingerprint,
        "synthetic": synthetic,
        # metadata only: the key already names the class folders (every relpath holds one), so the default
        # dataset's cache files and keys are unchanged
        "class_names": list(class_names),
    }
    write_atomic(path, lambda temp: torch.save(payload, temp))
    for stale in cache_dir.glob(f"{prefix}*.pt"):
        if stale != path:  # the same data folder and settings, older files: never read again
            stale.unlink(missing_ok=True)
            log.info("removed stale cache %s", stale.name)
    size_mb = path.stat().st_size / 2**20
    log.info("cache built: %s (%d images, %.0f MiB, %.1f s)", path.name, len(records), size_mb,
             time.perf_counter() - started)
    return result(images)


def load_images(
    data_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    split: str = "train",
    image_size: int = 128,
    color_mode: str = "grayscale",
    *,
    progress: bool = True,
) -> ImageCache:
    """Scan ``data_dir`` and return the cached images of ``split`` (building the cache when needed)."""
    _check_settings(split, image_size, color_mode)
    scan = scan_dataset(data_dir, work_dir, progress=progress)
    for rejected in scan.rejected:
        log.warning("skipping %s: %s", rejected.path, rejected.reason)
    records = scan.records_for(split)
    if not records:
        raise MuffinError(
            f"{scan.data_dir} has no valid images in {split}/ (expected "
            f"{' and '.join(f'{split}/{name}/' for name in scan.class_names)} with .jpg/.png files). "
            f"Run `python -m muffin_lib audit {scan.data_dir}`."
        )
    return build_cache(
        records,
        data_dir=scan.data_dir,
        split=split,
        image_size=image_size,
        color_mode=color_mode,
        work_dir=work_dir,
        progress=progress,
        synthetic=scan.synthetic,
        class_names=scan.class_names,
    )
