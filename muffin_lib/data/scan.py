"""Find and validate every image in DATA_DIR/train|test/<class>/ (bad files are rejected with a reason, and
a ``work_dir`` index lets a rescan only stat unchanged files); the audit report and ``audit`` CLI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from muffin_lib import config
from muffin_lib.config import CLASSES, IMAGE_EXTENSIONS, SPLITS, SYNTHETIC_MARKER, WorkDir
from muffin_lib.data.classes import find_classes, visible_entries
from muffin_lib.data.imageio import inspect_image, map_images
from muffin_lib.data.synthetic import is_synthetic
from muffin_lib.data.twins import describe_group, find_twins
from muffin_lib.errors import MuffinError
from muffin_lib.files import write_text_atomic
from muffin_lib.text import plural

log = logging.getLogger(__name__)

INDEX_VERSION = 1
_POOL_THRESHOLD = 64  # fewer files than this are faster to check in this process
_EXTENSION_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}


@dataclass(frozen=True)
class ImageRecord:
    path: Path  # absolute
    relpath: str  # POSIX, relative to data_dir, e.g. "train/muffin/img_0_1.jpg"
    split: str
    label: int  # index into the scan's class_names (config.CLASSES for muffin-vs-chihuahua)
    width: int  # as displayed (after EXIF rotation)
    height: int
    mode: str  # the file's own Pillow mode, e.g. "RGB", "L", "CMYK", "P"
    format: str  # "JPEG", "PNG", ...
    nbytes: int
    sha256: str

    @property
    def class_name(self) -> str:
        """The class folder's name, lower-cased (e.g. "muffin")."""
        return self.relpath.split("/")[1].lower()


@dataclass(frozen=True)
class Rejected:
    path: Path
    reason: str


@dataclass
class ScanResult:
    data_dir: Path
    records: list[ImageRecord]
    rejected: list[Rejected] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    synthetic: bool = False
    class_names: tuple[str, ...] = CLASSES  # label i = class_names[i]: the sorted class folders of train/

    def records_for(self, split: str) -> list[ImageRecord]:
        """The valid images of ``split``, sorted by relative path: the order every index refers to."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return sorted((r for r in self.records if r.split == split), key=lambda r: r.relpath)

    def fingerprint(self, split: str) -> str:
        """sha256 over the relative paths, labels and content hashes of ``split``: changes with any file."""
        return fingerprint_records(self.records_for(split))


def fingerprint_records(records: list[ImageRecord]) -> str:
    """sha256 over (relpath, label, content sha256): plans made for edited images are never reused."""
    digest = hashlib.sha256(b"content-v2\n")
    for record in sorted(records, key=lambda r: r.relpath):
        digest.update(f"{record.relpath}\t{record.label}\t{record.sha256}\n".encode())
    return digest.hexdigest()


def _missing_data_message(data_dir: Path) -> str:
    if not data_dir.exists():
        return (
            f"data folder {data_dir} does not exist. Run `python -m muffin_lib fetch --data-dir {data_dir}` "
            "to download the dataset (or make the synthetic demo set), or pass the right --data-dir."
        )
    nested = [child.name for child in sorted(data_dir.iterdir())
              if child.is_dir() and any(g.is_dir() and g.name.lower() == "train" for g in child.iterdir())]
    hint = f" It is one level down: use --data-dir {data_dir / nested[0]}." if nested else ""
    return (
        f"{data_dir} has no train/ folder (expected train/ and test/, each with one sub-folder of images per "
        f"class, e.g. {'/ and '.join(CLASSES)}/).{hint} "
        f"Run `python -m muffin_lib fetch --data-dir {data_dir}` to get the data in this layout."
    )


def _find_candidates(data_dir: Path, classes: tuple[str, ...]) -> tuple[list[tuple], list[str]]:
    """(relpath, split, label, stat) of every image-named file in the layout, plus layout warnings."""
    candidates, warnings, found_splits = [], [], set()
    for top in visible_entries(data_dir):
        if top.name == SYNTHETIC_MARKER or top.name.lower().startswith("readme"):
            continue
        split = top.name.lower()
        if not (top.is_dir() and split in SPLITS):
            slash = "/" if top.is_dir() else ""
            warnings.append(f"{top.name}{slash}: not a split folder (train/ or test/); ignored")
            continue
        found_splits.add(split)
        for class_entry in visible_entries(Path(top.path)):
            class_rel = f"{top.name}/{class_entry.name}"
            if not class_entry.is_dir():
                folders = "/, ".join(classes)
                warnings.append(f"{class_rel}: a file beside the class folders ({folders}/); ignored")
                continue
            label = classes.index(class_entry.name.lower())
            ignored = []
            for entry in visible_entries(Path(class_entry.path)):
                if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                    candidates.append((f"{class_rel}/{entry.name}", split, label, entry.stat()))
                else:
                    ignored.append(entry.name + ("/" if entry.is_dir() else ""))
            if ignored:
                shown = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
                what = "entry that is" if len(ignored) == 1 else "entries that are"
                warnings.append(f"{class_rel}: {len(ignored)} {what} not {'/'.join(IMAGE_EXTENSIONS)} files "
                                f"ignored: {shown}")
    for split in SPLITS:
        if split not in found_splits:
            warnings.append(f"no {split}/ folder in {data_dir}")
    return candidates, warnings


def _read_index(path: Path | None, data_dir: Path) -> dict:
    """Results of earlier scans of ``data_dir``: {relpath: [size, mtime_ns, inspect_image info]}."""
    try:
        stored = json.loads(path.read_text()) if path is not None else {}
        same = stored.get("version") == INDEX_VERSION and stored.get("data_dir") == str(data_dir)
        return stored["entries"] if same else {}
    except (OSError, ValueError, KeyError):
        return {}


def _inspect_all(data_dir: Path, candidates, work_dir, progress: bool, workers) -> dict:
    """{relpath: (stat, inspect_image info)}: from the index while size and mtime match, else checked anew."""
    name = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    path = None if work_dir is None else WorkDir(work_dir).cache_dir / f"scan-index-{name}.json"
    index = _read_index(path, data_dir)
    results = {}
    for rel, _, _, stat in candidates:
        entry = index.get(rel)
        results[rel] = (stat, entry[2] if entry and entry[:2] == [stat.st_size, stat.st_mtime_ns] else None)
    todo = [rel for rel, (_, info) in results.items() if info is None]
    if todo:
        paths = [str(data_dir / rel) for rel in todo]
        infos = map_images(inspect_image, paths, desc=f"checking images in {data_dir.name}",
                           progress=progress, pool_from=_POOL_THRESHOLD, workers=workers)
        for relpath, info in zip(todo, infos, strict=True):
            results[relpath] = (results[relpath][0], info)
        log.debug("checked %d new or changed files, %d known from the index", len(todo),
                  len(results) - len(todo))
    entries = {rel: [st.st_size, st.st_mtime_ns, info] for rel, (st, info) in results.items()}
    if path is not None and entries != index:
        payload = {"version": INDEX_VERSION, "data_dir": str(data_dir), "entries": entries}
        write_text_atomic(path, json.dumps(payload, separators=(",", ":")))
    return results


def scan_dataset(
    data_dir: str | os.PathLike, work_dir: str | os.PathLike | None = None, *, progress: bool = True,
    workers: int | None = None,
) -> ScanResult:
    """Validate every image under ``data_dir``; bad files are rejected with a reason, never fatal."""
    data_dir = Path(data_dir).expanduser().resolve()
    if not data_dir.is_dir() or not any(e.is_dir() and e.name.lower() == "train" for e in data_dir.iterdir()):
        raise MuffinError(_missing_data_message(data_dir))
    classes = find_classes(data_dir)
    candidates, warnings = _find_candidates(data_dir, classes)
    results = _inspect_all(data_dir, candidates, work_dir, progress, workers)
    records, rejected = [], []
    for relpath, split, label, _ in candidates:
        info = results[relpath][1]
        if not info["ok"]:
            rejected.append(Rejected(data_dir / relpath, info["reason"]))
            continue
        suffix = Path(relpath).suffix
        if info["format"] != _EXTENSION_FORMATS[suffix.lower()]:
            warnings.append(f"{relpath}: a {info['format']} file with a {suffix} name; "
                            "accepted (the content decides)")
        fields = {k: info[k] for k in ("width", "height", "mode", "format", "nbytes", "sha256")}
        records.append(ImageRecord(data_dir / relpath, relpath, split, label, **fields))
    for split in SPLITS:
        for label, name in enumerate(classes):
            has_folder = any(s == split and lab == label for _, s, lab, _ in candidates)
            if has_folder and not any(r.split == split and r.label == label for r in records):
                warnings.append(f"{split}/{name}: no valid images")
    records.sort(key=lambda r: r.relpath)
    return ScanResult(data_dir, records, rejected, warnings, is_synthetic(data_dir), classes)


def _stats(values: list[float]) -> dict:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


_ASPECT_BUCKETS = [  # (label, upper bound of width/height)
    ("portrait <0.8", 0.8), ("0.8-0.95", 0.95), ("square 0.95-1.05", 1.05), ("1.05-1.25", 1.25),
    ("1.25-1.5", 1.5), ("landscape >=1.5", float("inf")),
]
_SHORTER_SIDE_BUCKETS = [
    ("<128", 128), ("128-255", 256), ("256-511", 512), ("512-1023", 1024), (">=1024", float("inf")),
]


def _bucket_counts(values, buckets: list[tuple[str, float]]) -> dict[str, int]:
    counts = Counter(next(name for name, upper in buckets if value < upper) for value in values)
    return {name: counts.get(name, 0) for name, _ in buckets}


def _sizes(records: list[ImageRecord]) -> dict:
    shorter = [min(r.width, r.height) for r in records]
    return {
        "width": _stats([r.width for r in records]), "height": _stats([r.height for r in records]),
        "shorter_side": _stats(shorter), "nbytes": _stats([r.nbytes for r in records]),
        "aspect_ratio_buckets": _bucket_counts([r.width / r.height for r in records], _ASPECT_BUCKETS),
        "shorter_side_buckets": _bucket_counts(shorter, _SHORTER_SIDE_BUCKETS),
    }


def _duplicates(records: list[ImageRecord]) -> dict:
    """Exact duplicates (same bytes), in order of their first file; across the splits they are leakage."""
    groups = defaultdict(list)
    for record in records:
        groups[record.sha256].append(record)
    duplicates = []
    for sha, members in sorted(groups.items(), key=lambda item: item[1][0].relpath):
        if len(members) > 1:
            split_names = sorted({m.split for m in members})
            duplicates.append({"sha256": sha, "files": [m.relpath for m in members], "splits": split_names,
                               "cross_split": len(split_names) > 1,
                               "conflicting_labels": len({m.label for m in members}) > 1})
    return {
        "n_groups": len(duplicates),
        "n_extra_copies": sum(len(d["files"]) - 1 for d in duplicates),
        "n_cross_split": sum(d["cross_split"] for d in duplicates),
        "n_conflicting_labels": sum(d["conflicting_labels"] for d in duplicates),
        "groups": duplicates,
    }


def audit_dataset(data_dir: str | os.PathLike, work_dir: str | os.PathLike | None = None, *, progress=True):
    """A JSON-able report: counts, sizes, modes, exact duplicates, near-duplicate twins, rejects, warnings."""
    scan = scan_dataset(data_dir, work_dir, progress=progress)
    records = scan.records
    splits = {}
    for split in SPLITS:
        rows = [r for r in records if r.split == split]
        per_class = {name: sum(r.label == i for r in rows) for i, name in enumerate(scan.class_names)}
        splits[split] = {"total": len(rows), "per_class": per_class, "fingerprint": scan.fingerprint(split)}
    return {
        "data_dir": str(scan.data_dir), "synthetic": scan.synthetic, "class_names": list(scan.class_names),
        "n_images": len(records), "n_rejected": len(scan.rejected), "splits": splits,
        "sizes": _sizes(records),
        "modes": dict(Counter(r.mode for r in records).most_common()),
        "formats": dict(Counter(r.format for r in records).most_common()),
        "duplicates": _duplicates(records),
        "near_duplicates": find_twins(records, work_dir, progress=progress).summary(),
        "rejected": [{"path": r.path.relative_to(scan.data_dir).as_posix(), "reason": r.reason}
                     for r in scan.rejected],
        "warnings": list(scan.warnings),
    }


def format_audit(report: dict, *, max_listed: int = 20) -> str:
    """The audit report as readable text."""
    kind = "SYNTHETIC demo data, not the Kaggle photos" if report["synthetic"] else "real data"
    lines = [f"Dataset {report['data_dir']}: {kind}",
             f"{report['n_images']} valid images, {report['n_rejected']} rejected", ""]
    classes = report.get("class_names", CLASSES)
    width = max(11, *(len(name) + 2 for name in classes))
    lines.append(f"  {'split':<8}" + "".join(f"{name:>{width}}" for name in classes) + f"{'total':>9}")
    for split, info in report["splits"].items():
        counts = "".join(f"{info['per_class'][name]:>{width},}" for name in classes)
        lines.append(f"  {split:<8}{counts}{info['total']:>9,}")
    sizes = report["sizes"]
    if report["n_images"]:
        lines.append("")
        for key in ("width", "height", "shorter_side"):
            s = sizes[key]
            name = key.replace("_", " ")
            lines.append(f"  {name:<13} min {s['min']}  median {s['median']:g}  max {s['max']} px")
        kib = {k: v / 1024 for k, v in sizes["nbytes"].items()}
        lines.append(f"  {'file size':<13} min {kib['min']:.1f}  median {kib['median']:.1f}  "
                     f"max {kib['max']:.1f} KiB")
        for title, key in (("aspect w/h", "aspect_ratio_buckets"), ("shorter side", "shorter_side_buckets")):
            lines.append(f"  {title:<13} " + ", ".join(f"{k}: {v}" for k, v in sizes[key].items()))
        lines.append("  modes         " + ", ".join(f"{k}: {v}" for k, v in report["modes"].items()))
        lines.append("  formats       " + ", ".join(f"{k}: {v}" for k, v in report["formats"].items()))
    dup = report["duplicates"]
    copies = plural(dup["n_extra_copies"], "extra copy", "extra copies")
    lines += ["", f"Exact duplicates: {plural(dup['n_groups'], 'group')}, {copies}; {dup['n_cross_split']} "
              f"span train and test (LEAKAGE), {dup['n_conflicting_labels']} with conflicting labels"]
    for group in dup["groups"][:max_listed]:
        flags = [flag for flag, on in (("LEAKAGE", group["cross_split"]),
                                       ("LABEL CONFLICT", group["conflicting_labels"])) if on]
        lines.append(f"  {' = '.join(group['files'])}" + (f"  [{', '.join(flags)}]" if flags else ""))
    if dup["n_groups"] > max_listed:
        lines.append(f"  ... and {dup['n_groups'] - max_listed} more (see --json)")
    near = report["near_duplicates"]
    n_test = report["splits"]["test"]["total"]
    lines += ["", f"Near-duplicates (twins): {plural(near['n_groups'], 'group')} holding "
              f"{plural(near['n_images_in_groups'], 'image')}; {near['test_with_train_twin']} of "
              f"{plural(n_test, 'test image')} have a twin in train (LEAKAGE: scored separately as the "
              f"non-twin-free part), {plural(len(near['conflicting_labels']), 'group')} with conflicting "
              "labels",
              f"  method: {near['method']}"]
    crossing = [g for g in near["groups"] if len({p.split("/", 1)[0] for p in g}) > 1]
    for group in (crossing + [g for g in near["groups"] if g not in crossing])[:max_listed]:
        lines.append("  " + describe_group(group))
    if near["n_groups"] > max_listed:
        lines.append(f"  ... and {near['n_groups'] - max_listed} more (see --json)")
    for group in near["conflicting_labels"]:
        lines.append(f"  LABEL CONFLICT: {' = '.join(group)}")
    lines += ["", f"Rejected files: {len(report['rejected'])}"]
    lines += [f"  {item['path']}: {item['reason']}" for item in report["rejected"]]
    lines += ["", f"Warnings: {len(report['warnings'])}", *(f"  {warning}" for warning in report["warnings"])]
    return "\n".join(lines)


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    # The folder may be given as --data-dir, like every other command, or positionally (the older form).
    parser.add_argument("data_dir_positional", nargs="?", type=Path, default=None, metavar="DATA_DIR",
                        help=f"dataset folder, the same as --data-dir (default: {config.DEFAULT_DATA_DIR})")
    parser.add_argument("--data-dir", type=Path, default=None, dest="data_dir",
                        help=f"dataset folder (default: {config.DEFAULT_DATA_DIR})")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep a scan index here so the next "
                        "audit only re-checks changed files (default: none: re-check every file)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object (last line)")


def _audit_data_dir(args: argparse.Namespace) -> Path:
    """The folder to audit: ``--data-dir`` or the positional DATA_DIR (not two different), or the default."""
    flag, positional = getattr(args, "data_dir", None), getattr(args, "data_dir_positional", None)
    if flag is not None and positional is not None and (
        Path(flag).expanduser().resolve() != Path(positional).expanduser().resolve()
    ):
        raise MuffinError(f"two dataset folders given: DATA_DIR {positional} and --data-dir {flag}; "
                          "give one of them")
    return next((d for d in (flag, positional) if d is not None), config.DEFAULT_DATA_DIR)


def audit_command(args: argparse.Namespace) -> int:
    report = audit_dataset(_audit_data_dir(args), args.work_dir, progress=not args.json)
    print(json.dumps(report) if args.json else format_audit(report), flush=True)
    return 0
