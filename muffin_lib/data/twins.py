"""Near-duplicate photos ("twins"), grouped transitively: a twin on each side of a split lets a model be
scored on a photo it memorised. Twins have close perceptual hashes *and* correlated 32 x 32 thumbnails, or
almost identical thumbnails (thresholds measured on the dev data, see the README); cached per data content.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

import numpy as np

from muffin_lib.config import WorkDir
from muffin_lib.data.imageio import UnreadableImage, load_image, map_images
from muffin_lib.files import write_text_atomic

log = logging.getLogger(__name__)

TWINS_VERSION = 1  # bump when the method or thresholds change: cached results are then recomputed
PHASH_MAX_DISTANCE = 10  # of 64 bits
MIN_CORRELATION = 0.80
SURE_CORRELATION = 0.95
THUMBNAIL_SIZE = 32
_BLOCK = 1024  # rows of the correlation matrix computed at once (1024 x N float32)


def image_signature(path: str) -> tuple[bytes, bytes] | None:
    """Worker job: :func:`image_signature_of` the image at ``path`` (JPEG drafted), None if unreadable."""
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
    """``(bits, ones, unit)``: hash bits, their counts and unit-length centred thumbnails, so that
    ``ones_i + ones_j - 2 bits_i.bits_j`` is the Hamming distance and ``unit_i.unit_j`` the correlation."""
    n = len(hashes)
    pixels = np.asarray(thumbnails, dtype=np.float32).reshape(n, -1)
    centred = pixels - pixels.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    unit = centred / np.where(norms > 0, norms, 1.0)  # a flat image correlates with nothing
    bits = np.unpackbits(np.asarray(hashes, dtype=np.uint8).reshape(n, -1), axis=1).astype(np.float32)
    return bits, bits.sum(axis=1), unit


def is_twin(distance, correlation):
    """The rule: hashes close *and* thumbnails correlated, or thumbnails alone almost identical."""
    close = (distance <= PHASH_MAX_DISTANCE) & (correlation >= MIN_CORRELATION)
    return close | (correlation >= SURE_CORRELATION)


def twin_pairs(hashes: np.ndarray, thumbnails: np.ndarray) -> list[tuple[int, int]]:
    """Index pairs (i < j) of twins; ``hashes``: N x 8 uint8 packed phashes, ``thumbnails``: N x D pixels."""
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
        rows, cols = np.nonzero(is_twin(distance, correlation))
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
    return multi_member_groups(connected_components(graph, directed=False)[1])


def multi_member_groups(ids) -> list[list[int]]:
    """The indices sharing an id, for ids held by more than one, ordered by their first index."""
    members: dict[int, list[int]] = {}
    for index, group in enumerate(np.asarray(ids).tolist()):
        members.setdefault(group, []).append(index)
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
        n = len(self.groups)
        return np.array([self._group_of.get(path, n + i) for i, path in enumerate(relpaths)], dtype=np.int64)

    def has_twin_in(self, relpath: str, split: str) -> bool:
        """True when another member of this image's group lies in ``split`` (``train`` or ``test``)."""
        group = self.groups[self._group_of[relpath]] if relpath in self._group_of else []
        return any(p != relpath and p.split("/", 1)[0] == split for p in group)

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
        """True for the twin-free part of the test split (the one definition): no twin in train, and of a
        test-only group only the first by relative path, so its images are independent (as tests assume)."""
        return np.array([self.is_twin_free(p) for p in test_relpaths], dtype=bool)

    def summary(self) -> dict:
        """The ``near_duplicates`` block of ``audit --json``."""
        test_with_train_twin = sorted(p for group in self.groups for p in group
                                      if p.startswith("test/") and self.has_twin_in(p, "train"))
        conflicting = [g for g in self.groups if len({self.labels.get(p) for p in g}) > 1]
        return {
            "method": f"phash Hamming distance <= {PHASH_MAX_DISTANCE} and 32x32 greyscale thumbnail "
            f"correlation >= {MIN_CORRELATION}, or correlation >= {SURE_CORRELATION}; grouped transitively",
            "n_groups": len(self.groups), "n_images_in_groups": sum(len(g) for g in self.groups),
            "n_pairs": len(self.pairs), "test_with_train_twin": len(test_with_train_twin),
            "test_with_train_twin_paths": test_with_train_twin,
            "n_groups_within_train": sum(all(p.startswith("train/") for p in g) for g in self.groups),
            "conflicting_labels": conflicting, "groups": self.groups,
        }

    def to_json(self) -> dict:
        return {"groups": self.groups, "labels": self.labels, "pairs": [list(p) for p in self.pairs]}

    @classmethod
    def from_json(cls, data: dict) -> TwinGroups:
        return cls([list(g) for g in data["groups"]], dict(data["labels"]), [tuple(p) for p in data["pairs"]])


def _content_key(records) -> str:
    rule = f"twins v{TWINS_VERSION} d{PHASH_MAX_DISTANCE} r{MIN_CORRELATION} s{SURE_CORRELATION}\n"
    digest = hashlib.sha256(rule.encode())
    for record in sorted(records, key=lambda r: r.relpath):
        digest.update(f"{record.relpath}\t{record.label}\t{record.sha256}\n".encode())
    return digest.hexdigest()


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
    paths = [str(r.path) for r in records]
    desc = "looking for near-duplicates"
    signatures = list(map_images(image_signature, paths, desc=desc, progress=progress, pool_from=128))
    usable = [i for i, s in enumerate(signatures) if s is not None]
    hashes, thumbnails = (np.frombuffer(b"".join(signatures[i][part] for i in usable), dtype=np.uint8)
                          .reshape(len(usable), -1) for part in (0, 1))
    index_pairs = [(usable[a], usable[b]) for a, b in twin_pairs(hashes, thumbnails)]
    groups = [[records[i].relpath for i in group] for group in group_pairs(len(records), index_pairs)]
    grouped = {p for g in groups for p in g}
    result = TwinGroups(groups, {r.relpath: r.label for r in records if r.relpath in grouped},
                        [(records[a].relpath, records[b].relpath) for a, b in index_pairs])
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
