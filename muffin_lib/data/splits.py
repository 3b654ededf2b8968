"""Seeded, stratified, twin-grouped validation split and K folds over ``records_for("train")`` (the cache's
order), saved once and reused while the data fingerprint and twin groups match.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from muffin_lib.config import CLASSES, DEFAULT_DATA_DIR, DEFAULT_WORK_DIR, WorkDir
from muffin_lib.data.scan import fingerprint_records, scan_dataset
from muffin_lib.data.twins import find_twins, multi_member_groups
from muffin_lib.errors import MuffinError
from muffin_lib.files import write_text_atomic
from muffin_lib.text import plural

log = logging.getLogger(__name__)

SPLITS_VERSION = 2  # 2: twin-grouped splits, content fingerprints (1 was ungrouped)
VAL_FRACTION = 0.2  # share of the training split held out for validation (twin groups kept whole)
N_SPLITS = 5  # K of K-fold cross-validation


@dataclass
class SplitPlan:
    seed: int
    val_fraction: float
    n_splits: int
    fingerprint: str
    n: int
    train_idx: np.ndarray  # the split used for single-model training with a validation set
    val_idx: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # K-fold CV over all n
    groups: np.ndarray | None = None  # group id per index; twins share one
    # label i = class_names[i]; not part of the key or identity (the fingerprint covers the class folders)
    class_names: tuple[str, ...] = CLASSES

    @property
    def key(self) -> str:
        return plan_key(self.seed, self.val_fraction, self.n_splits)

    @property
    def identity(self) -> str:
        """The parameters plus a hash of every index: what a checkpoint or result made on it records."""
        digest = hashlib.sha256(np.asarray(self.val_idx, dtype=np.int64).tobytes())
        for _, test in self.folds:
            digest.update(np.asarray(test, dtype=np.int64).tobytes())
        return f"{self.key},v{SPLITS_VERSION},{digest.hexdigest()[:12]}"

    def twin_groups(self) -> list[list[int]]:
        """Groups of more than one index (twins)."""
        return [] if self.groups is None else multi_member_groups(self.groups)

def plan_key(seed: int, val_fraction: float, n_splits: int) -> str:
    return f"seed={seed},val_fraction={val_fraction:g},n_splits={n_splits}"

def _groups_from_lists(twin_groups: list[list[int]], n: int) -> np.ndarray:
    groups = np.arange(n, dtype=np.int64) + n  # singletons: their own id
    for number, members in enumerate(twin_groups):
        groups[np.asarray(members, dtype=np.int64)] = number
    return groups

def _check_groups(groups, n: int) -> np.ndarray:
    if groups is None:
        return np.arange(n, dtype=np.int64)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise MuffinError(f"need one group id per image ({n}), got an array of shape {groups.shape}")
    return groups

def _check_labels(labels, n_splits: int, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise MuffinError(f"{what}: need a non-empty 1-D array of labels, got shape {labels.shape}")
    counts = np.unique(labels, return_counts=True)[1]
    smallest = int(counts.min())
    if len(counts) < 2 or smallest < n_splits:
        raise MuffinError(
            f"{what}: {n_splits} stratified folds need at least {n_splits} images of every class, "
            f"but the smallest class has {smallest if len(counts) > 1 else 0}. Add images or lower n_splits."
        )
    return labels

def grouped_folds(labels, groups, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_splits`` seeded folds (``StratifiedGroupKFold``), stratified by label, never splitting a group."""
    labels = _check_labels(labels, n_splits, "grouped_folds")
    groups = _check_groups(groups, len(labels))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = [(np.sort(tr), np.sort(te)) for tr, te in splitter.split(np.zeros(len(labels)), labels, groups)]
    if any(test.size == 0 or train.size == 0 for train, test in folds):
        n_groups = plural(len(np.unique(groups)), "group")
        raise MuffinError(f"{n_groups} of images are too few for {n_splits} folds; use fewer folds")
    return folds

def grouped_part(labels, groups, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, part): a stratified, group-keeping ``part`` of about ``fraction`` (a fold of K = 1/fraction)."""
    if not 0.0 < fraction < 1.0:
        raise MuffinError(f"the fraction must lie strictly between 0 and 1, got {fraction}")
    k = max(2, int(round(1.0 / min(fraction, 1.0 - fraction))))
    train, test = grouped_folds(labels, groups, k, seed)[0]
    return (train, test) if fraction <= 0.5 else (test, train)

def make_split_plan(
    labels, groups=None, *, val_fraction=VAL_FRACTION, n_splits=N_SPLITS, seed=0, fingerprint="",
    class_names=CLASSES,
) -> SplitPlan:
    """A seeded, stratified hold-out split and ``n_splits`` folds, keeping each group whole."""
    if not 0.0 < val_fraction < 1.0:
        raise MuffinError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if n_splits < 2:
        raise MuffinError(f"n_splits must be at least 2, got {n_splits}")
    labels = _check_labels(labels, n_splits, "make_split_plan")
    groups = _check_groups(groups, len(labels))
    train_idx, val_idx = grouped_part(labels, groups, val_fraction, seed)
    folds = grouped_folds(labels, groups, n_splits, seed)
    return SplitPlan(seed, val_fraction, n_splits, fingerprint, len(labels), train_idx, val_idx, folds,
                     groups, tuple(class_names))

def inner_folds(labels_subset, n_splits: int, seed: int, groups_subset=None) -> list[tuple]:
    """Stratified, grouped folds over a subset for nested CV; indices are positions in ``labels_subset``."""
    return grouped_folds(labels_subset, groups_subset, n_splits, seed)

def _to_json(plan: SplitPlan) -> dict:
    return {  # a fold's training part is the complement of its test part
        "version": SPLITS_VERSION, "seed": plan.seed, "val_fraction": plan.val_fraction,
        "n_splits": plan.n_splits, "fingerprint": plan.fingerprint, "n": plan.n,
        "twin_groups": plan.twin_groups(),
        "val_idx": plan.val_idx.tolist(), "fold_test_idx": [test.tolist() for _, test in plan.folds],
        "class_names": list(plan.class_names),
    }

def _from_json(data: dict) -> SplitPlan:
    n = data["n"]
    everything = np.arange(n)
    val_idx = np.asarray(data["val_idx"], dtype=np.int64)
    tests = [np.asarray(test, dtype=np.int64) for test in data["fold_test_idx"]]
    folds = [(np.setdiff1d(everything, test), test) for test in tests]
    return SplitPlan(
        data["seed"], data["val_fraction"], data["n_splits"], data["fingerprint"], n,
        np.setdiff1d(everything, val_idx), val_idx, folds,
        _groups_from_lists(data["twin_groups"], n),
        tuple(data.get("class_names", CLASSES)),  # plans written before class names: the default
    )

def _read(path) -> dict:
    if not path.is_file():
        return {"version": SPLITS_VERSION, "plans": {}}
    try:
        stored = json.loads(path.read_text())
        if not isinstance(stored.get("plans"), dict):
            raise ValueError("no plans")
    except (ValueError, AttributeError):
        message = f"{path} is not a valid splits file; delete it to create the splits again"
        raise MuffinError(message) from None
    if stored.get("version") != SPLITS_VERSION:
        log.warning("%s holds split plans made without near-duplicate (twin) groups by an older muffin_lib; "
                    "they are replaced by twin-grouped plans. Results made on the old splits are not reused "
                    "(their keys differ).", path)
        return {"version": SPLITS_VERSION, "plans": {}}
    return stored

def load_or_create_splits(
    work_dir: str | os.PathLike, labels, fingerprint: str, *, groups, val_fraction: float = VAL_FRACTION,
    n_splits: int = N_SPLITS, seed: int = 0, class_names=CLASSES,
) -> SplitPlan:
    """The saved plan for these parameters, or a new one saved to ``WorkDir(work_dir).splits_file``; one whose
    twin groups (``groups``: an id per image, or None) differ is rebuilt, one for other files an error."""
    path = WorkDir(work_dir).splits_file
    labels = np.asarray(labels)
    groups = _check_groups(groups, len(labels))
    stored = _read(path)
    key = plan_key(seed, val_fraction, n_splits)
    if key in stored["plans"]:
        plan = _from_json(stored["plans"][key])
        if plan.fingerprint != fingerprint or plan.n != len(labels):
            raise MuffinError(
                f"the data changed since the splits in {path} were made ({key}: made for {plan.n} images, "
                f"fingerprint {plan.fingerprint[:12]}; now {len(labels)} images, fingerprint "
                f"{fingerprint[:12]}). Indices would point at other images, so results would not be "
                f"comparable. Use a new work_dir for the changed data, or delete {path} (and the results "
                "made with it) to start over."
            )
        if plan.twin_groups() == multi_member_groups(groups):
            plan.class_names = tuple(class_names)
            return plan
        log.warning("the twin groups of the data differ from those of the saved split %s in %s; "
                    "making it anew", key, path)
    plan = make_split_plan(labels, groups, val_fraction=val_fraction, n_splits=n_splits, seed=seed,
                           fingerprint=fingerprint, class_names=class_names)
    stored["plans"][key] = _to_json(plan)
    write_text_atomic(path, json.dumps(stored))
    return plan

def plan_for_scan(scan, work_dir, *, val_fraction=VAL_FRACTION, n_splits=N_SPLITS, seed=0, progress=False):
    """``(SplitPlan, TwinGroups)`` of a ``ScanResult``: twins over train and test, the plan over train."""
    records = scan.records_for("train")
    twins = find_twins(scan.records, work_dir, progress=progress)
    plan = load_or_create_splits(
        work_dir, [r.label for r in records], fingerprint_records(records),
        groups=twins.group_ids([r.relpath for r in records]), val_fraction=val_fraction, n_splits=n_splits,
        seed=seed, class_names=scan.class_names,
    )
    return plan, twins

def plan_for_cache(cache, work_dir, *, val_fraction=VAL_FRACTION, n_splits=N_SPLITS, seed=0) -> SplitPlan:
    """The twin-grouped split plan of an ``ImageCache`` of the train split."""
    scan = scan_dataset(cache.data_dir, work_dir, progress=False)
    if [r.relpath for r in scan.records_for("train")] != list(cache.relpaths):
        raise MuffinError(f"the images in {cache.data_dir} changed since the cache was loaded; "
                          "load the cache again")
    return plan_for_scan(scan, work_dir, val_fraction=val_fraction, n_splits=n_splits, seed=seed)[0]

def twin_free_test_images(data_dir, work_dir=None, relpaths=None) -> tuple[list[str], np.ndarray]:
    """(test relpaths in cache order, True where in the twin-free part: ``TwinGroups.twin_free_mask``)."""
    scan = scan_dataset(data_dir, work_dir, progress=False)
    twins = find_twins(scan.records, work_dir, progress=False)
    paths = list(relpaths) if relpaths is not None else [r.relpath for r in scan.records_for("test")]
    return paths, twins.twin_free_mask(paths)

def add_split_arguments(parser) -> None:
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="dataset folder (train/ and test/) (default: %(default)s)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                        help="where splits.json is kept (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=5, help="K of K-fold CV (default: %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=VAL_FRACTION,
                        help="share of train held out for validation (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split plan (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object (last line)")

def split_plan_report(plan: SplitPlan, twins, scan) -> dict:
    """The plan in relative paths: fit/validation, each fold's held-out part, twin groups, and the test split
    as its twin-free part, the images with a twin in train and those left out as twins of a kept one."""
    train_paths = [r.relpath for r in scan.records_for("train")]
    test_paths = [r.relpath for r in scan.records_for("test")]
    free = twins.twin_free_mask(test_paths)
    in_train = [twins.has_twin_in(p, "train") for p in test_paths]
    return {
        "data_dir": str(scan.data_dir), "key": plan.key, "identity": plan.identity,
        "fit": [train_paths[i] for i in plan.train_idx], "validation": [train_paths[i] for i in plan.val_idx],
        "folds": [[train_paths[i] for i in test] for _, test in plan.folds], "twin_groups": twins.groups,
        "test_twin_free": [p for p, keep in zip(test_paths, free, strict=True) if keep],
        "test_with_train_twin": [p for p, twin in zip(test_paths, in_train, strict=True) if twin],
        "test_twin_of_test": [p for p, keep, twin in zip(test_paths, free, in_train, strict=True)
                              if not keep and not twin],
    }

def format_split_report(report: dict) -> str:
    def counts(paths):
        per_class = Counter(p.split("/")[1] for p in paths)
        return f"{len(paths):>5} images ({', '.join(f'{k} {v}' for k, v in sorted(per_class.items()))})"

    lines = [f"Split plan {report['key']} of {report['data_dir']}", f"  fit         {counts(report['fit'])}",
             f"  validation  {counts(report['validation'])}"]
    lines += [f"  fold {i + 1} held out {counts(fold)}" for i, fold in enumerate(report["folds"])]
    within = sum(1 for g in report["twin_groups"] if all(p.startswith("train/") for p in g))
    lines += [
        f"  twin groups: {len(report['twin_groups'])} ({within} inside train, each kept on one side of every "
        "split)",
        f"  test, twin-free part      {counts(report['test_twin_free'])}",
        f"  test, with a twin in train {counts(report['test_with_train_twin'])}",
        f"  test, twin of a kept test image {counts(report['test_twin_of_test'])}",
    ]
    return "\n".join(lines)

def split_command(args) -> int:
    if args.folds < 2:
        raise MuffinError(f"--folds must be at least 2, got {args.folds}")
    scan = scan_dataset(args.data_dir, args.work_dir, progress=not args.json)
    plan, twins = plan_for_scan(scan, args.work_dir, val_fraction=args.val_fraction, n_splits=args.folds,
                                seed=args.seed, progress=not args.json)
    report = split_plan_report(plan, twins, scan)
    print(json.dumps(report) if args.json else format_split_report(report))
    return 0
