"""Near-duplicate photos ("twins"): the same picture saved twice, re-encoded, resized or trimmed.

A model that memorised one twin is scored on the other when they fall on both sides of a split, so
twins bias every held-out number low. This module finds them and groups them transitively; the split
plan keeps every group on one side, and test scores are also reported on the twin-free part of the test
split (``TwinGroups.twin_free_mask``, the one definition: test images with no twin in train, one image per
twin group, so that its images are independent).

Method, chosen by measuring on the dev data (4,733 Kaggle train photos; see the README):

* every image is decoded once (JPEG draft mode), made upright and greyscale, and summarised by its
  64-bit perceptual hash (``imagehash.phash``) and a 32 x 32 thumbnail;
* two images are twins when the Hamming distance of their hashes is at most
  ``PHASH_MAX_DISTANCE`` *and* the Pearson correlation of their thumbnails is at least
  ``MIN_CORRELATION``, or when the thumbnails alone correlate at ``SURE_CORRELATION`` or more (recolourings
  the hash misses). Either signal alone makes false pairs: line drawings of similar dogs share hashes,
  plain white backgrounds share thumbnails;
* groups are the connected components of the twin graph (scipy), so A~B and B~C put A, B, C together.

Measured on the dev data: re-encoding (JPEG q=50) and halving the size are always found, a 3-4 % trim
plus resize 95 % of the time; a 10 % crop only about half the time. The result is cached per data
content in ``work_dir/cache`` (a second audit reads it in milliseconds).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

import numpy as np

from muffin_lib.config import WorkDir
from muffin_lib.files import write_text_atomic

log = logging.getLogger(__name__)

TWINS_VERSION = 1  # bump when the method or thresholds change: cached results are then recomputed
PHASH_MAX_DISTANCE = 10  # of 64 bits
MIN_CORRELATION = 0.80
SURE_CORRELATION = 0.95
THUMBNAIL_SIZE = 32
_BLOCK = 1024  # rows of the correlation matrix computed at once (1024 x N float32)


def image_signature(path: str) -> tuple[bytes, bytes] | None:
    """Worker job: :func:`image_signature_of` the image at ``path`` (JPEGs decoded in draft mode), None if
    it cannot be read."""
    from muffin_lib.data.imageio import UnreadableImage, load_image

    try:
        image = load_image(path, draft_mode="L", draft_size=4 * THUMBNAIL_SIZE)
    except UnreadableImage:
        return None
    return image_signature_of(image)


def image_signature_of(image) -> tuple[bytes, bytes]:
    """(8-byte perceptual hash, 32x32 greyscale thumbnail bytes) of an upright PIL image."""
    import imagehash
    from PIL import Image

    image = image.convert("L")
    bits = imagehash.phash(image).hash.ravel()
    thumbnail = image.resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BILINEAR)
    return np.packbits(bits).tobytes(), np.asarray(thumbnail, dtype=np.uint8).tobytes()


def features(hashes, thumbnails) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(bits, ones, unit)``: the hashes as N x 64 float 0/1, their bit counts, and the thumbnails centred
    and scaled to unit length, so that ``ones_i + ones_j - 2 bits_i.bits_j`` is the Hamming distance and
    ``unit_i.unit_j`` the Pearson correlation."""
    n = len(hashes)
    pixels = np.asarray(thumbnails, dtype=np.float32).reshape(n, -1)
    centred = pixels - pixels.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    unit = centred / np.where(norms > 0, norms, 1.0)  # a flat image correlates with nothing
    bits = np.unpackbits(np.asarray(hashes, dtype=np.uint8).reshape(n, -1), axis=1).astype(np.float32)
    return bits, bits.sum(axis=1), unit


def is_twin(distance, correlation):
    """The rule: hashes close *and* thumbnails correlated, or thumbnails alone almost identical."""
    return ((distance <= PHASH_MAX_DISTANCE) & (correlation >= MIN_CORRELATION)) | (correlation >= SURE_CORRELATION)


def twin_pairs(hashes: np.ndarray, thumbnails: np.ndarray) -> list[tuple[int, int]]:
    """Index pairs (i < j) that are twins under the rule above.

    ``hashes``: N x 8 uint8 (packed 64-bit perceptual hashes); ``thumbnails``: N x D pixel values.
    """
    n = len(hashes)
    if n < 2:
        return []
    bits, ones, unit = features(hashes, thumbnails)
    pairs = []
    for start in range(0, n, _BLOCK):
        block = slice(start, min(n, start + _BLOCK))
        correlation = unit[block] @ unit.T
        # Hamming distance of 0/1 vectors: |a| + |b| - 2 a.b
        distance = ones[block, None] + ones[None, :] - 2.0 * (bits[block] @ bits.T)
        twin = is_twin(distance, correlation)
        rows, cols = np.nonzero(twin)
        rows = rows + start
        keep = rows < cols
        pairs.extend(zip(rows[keep].tolist(), cols[keep].tolist(), strict=True))
    return pairs


def group_pairs(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components with more than one member, each sorted, ordered by their first index."""
    if not pairs:
        return []
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows, cols = np.asarray(pairs, dtype=np.int64).T
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for index, label in enumerate(component.tolist()):
        members.setdefault(label, []).append(index)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])


@dataclass
class TwinGroups:
    """Twin groups of one dataset, as lists of relative paths (``train/muffin/img_0_1.jpg``)."""

    groups: list[list[str]]
    labels: dict[str, int] = field(default_factory=dict)  # relpath -> label of every image in a group
    pairs: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._group_of = {path: number for number, group in enumerate(self.groups) for path in group}

    def group_of(self, relpath: str) -> int | None:
        return self._group_of.get(relpath)

    def group_ids(self, relpaths: list[str]) -> np.ndarray:
        """One id per path for grouped splitting: twins share an id, every other image has its own."""
        ids = np.empty(len(relpaths), dtype=np.int64)
        offset = len(self.groups)
        for i, path in enumerate(relpaths):
            number = self._group_of.get(path)
            ids[i] = number if number is not None else offset + i
        return ids

    def has_twin_in(self, relpath: str, split: str) -> bool:
        """True when another member of this image's group lies in ``split`` (``train`` or ``test``)."""
        number = self._group_of.get(relpath)
        if number is None:
            return False
        return any(p != relpath and p.split("/", 1)[0] == split for p in self.groups[number])

    def is_twin_free(self, relpath: str) -> bool:
        """Whether test image ``relpath`` belongs to the twin-free part: see :meth:`twin_free_mask`."""
        number = self._group_of.get(relpath)
        if number is None:
            return True
        group = self.groups[number]
        if any(p.split("/", 1)[0] == "train" for p in group if p != relpath):
            return False
        return relpath == min(p for p in group if p.split("/", 1)[0] == "test")

    def twin_free_mask(self, test_relpaths: list[str]) -> np.ndarray:
        """True for the test images in the twin-free part of the test split; the one home of its definition.

        The twin-free part is the test images with no twin in the train split, *one image per twin group*:
        of test images that are twins of each other (and have none in train), only the first in record order
        (sorted relative path) is kept, so the part holds independent images, as its Wilson intervals and
        McNemar tests assume. Whether an image is kept depends on its path alone, not on which other paths
        are passed. Images with a train twin, and the later members of a test-only group, are False.
        """
        return np.array([self.is_twin_free(p) for p in test_relpaths], dtype=bool)

    def summary(self) -> dict:
        """The ``near_duplicates`` block of ``audit --json``."""
        test_with_train_twin = sorted(
            p for group in self.groups for p in group if p.startswith("test/") and self.has_twin_in(p, "train")
        )
        conflicting = [g for g in self.groups if len({self.labels.get(p) for p in g}) > 1]
        return {
            "method": (
                f"phash Hamming distance <= {PHASH_MAX_DISTANCE} and 32x32 greyscale thumbnail correlation >= "
                f"{MIN_CORRELATION}, or correlation >= {SURE_CORRELATION}; grouped transitively"
            ),
            "n_groups": len(self.groups),
            "n_images_in_groups": sum(len(g) for g in self.groups),
            "n_pairs": len(self.pairs),
            "test_with_train_twin": len(test_with_train_twin),
            "test_with_train_twin_paths": test_with_train_twin,
            "n_groups_within_train": sum(all(p.startswith("train/") for p in g) for g in self.groups),
            "conflicting_labels": conflicting,
            "groups": self.groups,
        }

    def to_json(self) -> dict:
        return {"groups": self.groups, "labels": self.labels, "pairs": [list(p) for p in self.pairs]}

    @classmethod
    def from_json(cls, data: dict) -> TwinGroups:
        return cls([list(g) for g in data["groups"]], dict(data["labels"]), [tuple(p) for p in data["pairs"]])


def _content_key(records) -> str:
    digest = hashlib.sha256(
        f"twins v{TWINS_VERSION} d{PHASH_MAX_DISTANCE} r{MIN_CORRELATION} s{SURE_CORRELATION}\n".encode()
    )
    for record in sorted(records, key=lambda r: r.relpath):
        digest.update(f"{record.relpath}\t{record.label}\t{record.sha256}\n".encode())
    return digest.hexdigest()


def _signatures(paths: list[str], progress: bool) -> list[tuple[bytes, bytes] | None]:
    from muffin_lib.pool import default_workers, process_pool
    from muffin_lib.progress import progress_bar

    workers = default_workers()
    results: list[tuple[bytes, bytes] | None] = []
    with progress_bar(total=len(paths), enabled=progress, desc="looking for near-duplicates", unit="img") as bar:
        if workers > 1 and len(paths) >= 128:
            with process_pool(workers) as pool:
                for signature in pool.map(image_signature, paths, chunksize=64):
                    results.append(signature)
                    bar.update()
        else:
            for path in paths:
                results.append(image_signature(path))
                bar.update()
    return results


def find_twins(records, work_dir=None, *, progress: bool = True) -> TwinGroups:
    """Twin groups among ``records`` (``scan.ImageRecord`` of every split), cached in ``work_dir``."""
    records = sorted(records, key=lambda r: r.relpath)
    key = _content_key(records)
    path = WorkDir(work_dir).cache_dir / f"twins-{key[:20]}.json" if work_dir is not None else None
    if path is not None and path.is_file():
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                return TwinGroups.from_json(stored)
        except (OSError, ValueError, KeyError):
            log.warning("near-duplicate cache %s is unreadable; recomputing it", path)
    signatures = _signatures([str(r.path) for r in records], progress)
    usable = [i for i, s in enumerate(signatures) if s is not None]
    hashes = np.frombuffer(b"".join(signatures[i][0] for i in usable), dtype=np.uint8).reshape(len(usable), -1)
    thumbnails = np.frombuffer(b"".join(signatures[i][1] for i in usable), dtype=np.uint8).reshape(len(usable), -1)
    index_pairs = [(usable[a], usable[b]) for a, b in twin_pairs(hashes, thumbnails)]
    groups = [[records[i].relpath for i in group] for group in group_pairs(len(records), index_pairs)]
    grouped = {p for g in groups for p in g}
    result = TwinGroups(
        groups,
        {r.relpath: r.label for r in records if r.relpath in grouped},
        [(records[a].relpath, records[b].relpath) for a, b in index_pairs],
    )
    if path is not None:
        write_text_atomic(path, json.dumps({"key": key, **result.to_json()}))
    return result


def describe_group(group: list[str]) -> str:
    """``train/muffin/a.jpg = test/muffin/b.jpg  [train+test]`` for the text audit (class from the folder)."""
    flags = []
    if len({p.split("/", 1)[0] for p in group}) > 1:
        flags.append("train+test")
    if len({p.split("/")[1].lower() for p in group if p.count("/") >= 2}) > 1:
        flags.append("LABEL CONFLICT")
    return " = ".join(group) + (f"  [{', '.join(flags)}]" if flags else "")
