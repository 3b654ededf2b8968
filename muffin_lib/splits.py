"""Seeded, stratified validation split and K folds over the train split, saved once and reused.

Every index refers to ``ScanResult.records_for("train")`` (sorted by relative path), i.e. the order
of the cache. ``splits.json`` keeps several plans keyed by their parameters; a plan is reused only
while the file fingerprint it was made for still matches, so notebooks and CLI runs share one split.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

from muffin_lib.config import WorkDir
from muffin_lib.errors import MuffinError

SPLITS_VERSION = 1


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

    @property
    def key(self) -> str:
        return plan_key(self.seed, self.val_fraction, self.n_splits)


def plan_key(seed: int, val_fraction: float, n_splits: int) -> str:
    return f"seed={seed},val_fraction={val_fraction:g},n_splits={n_splits}"


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


def make_split_plan(
    labels, *, val_fraction: float = 0.2, n_splits: int = 5, seed: int = 0, fingerprint: str = ""
) -> SplitPlan:
    """A stratified hold-out split (``val_fraction``) and ``n_splits`` stratified folds, both seeded."""
    if not 0.0 < val_fraction < 1.0:
        raise MuffinError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if n_splits < 2:
        raise MuffinError(f"n_splits must be at least 2, got {n_splits}")
    labels = _check_labels(labels, n_splits, "make_split_plan")
    n = len(labels)
    placeholder = np.zeros(n)
    try:
        holdout = StratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
        train_idx, val_idx = next(holdout.split(placeholder, labels))
    except ValueError as error:
        raise MuffinError(f"cannot hold out {val_fraction:.0%} of {n} images per class: {error}") from None
    return SplitPlan(
        seed=seed,
        val_fraction=val_fraction,
        n_splits=n_splits,
        fingerprint=fingerprint,
        n=n,
        train_idx=np.sort(train_idx),
        val_idx=np.sort(val_idx),
        folds=_kfold(labels, n_splits, seed),
    )


def _kfold(labels: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(np.sort(tr), np.sort(te)) for tr, te in splitter.split(np.zeros(len(labels)), labels)]


def inner_folds(labels_subset, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds over a subset for nested CV; indices are positions within ``labels_subset``."""
    return _kfold(_check_labels(labels_subset, n_splits, "inner_folds"), n_splits, seed)


def _to_json(plan: SplitPlan) -> dict:
    return {
        "seed": plan.seed,
        "val_fraction": plan.val_fraction,
        "n_splits": plan.n_splits,
        "fingerprint": plan.fingerprint,
        "n": plan.n,
        "val_idx": plan.val_idx.tolist(),
        # a fold's training part is the complement of its test part
        "fold_test_idx": [test.tolist() for _, test in plan.folds],
    }


def _from_json(data: dict) -> SplitPlan:
    n = data["n"]
    everything = np.arange(n)
    val_idx = np.asarray(data["val_idx"], dtype=np.int64)
    folds = []
    for test in data["fold_test_idx"]:
        test = np.asarray(test, dtype=np.int64)
        folds.append((np.setdiff1d(everything, test), test))
    return SplitPlan(
        seed=data["seed"],
        val_fraction=data["val_fraction"],
        n_splits=data["n_splits"],
        fingerprint=data["fingerprint"],
        n=n,
        train_idx=np.setdiff1d(everything, val_idx),
        val_idx=val_idx,
        folds=folds,
    )


def _read(path) -> dict:
    if not path.is_file():
        return {"version": SPLITS_VERSION, "plans": {}}
    try:
        stored = json.loads(path.read_text())
        if not isinstance(stored.get("plans"), dict):
            raise ValueError("no plans")
        return stored
    except (ValueError, AttributeError):
        raise MuffinError(f"{path} is not a valid splits file; delete it to create the splits again") from None


def load_or_create_splits(
    work_dir: str | os.PathLike,
    labels,
    fingerprint: str,
    *,
    val_fraction: float = 0.2,
    n_splits: int = 5,
    seed: int = 0,
) -> SplitPlan:
    """The saved plan for these parameters, or a new one saved to ``WorkDir(work_dir).splits_file``.

    Raises MuffinError when the saved plan was made for other files (fingerprint or count differ).
    """
    path = WorkDir(work_dir).splits_file
    labels = np.asarray(labels)
    stored = _read(path)
    key = plan_key(seed, val_fraction, n_splits)
    if key in stored["plans"]:
        plan = _from_json(stored["plans"][key])
        if plan.fingerprint != fingerprint or plan.n != len(labels):
            raise MuffinError(
                f"the data changed since the splits in {path} were made ({key}: made for {plan.n} images, "
                f"fingerprint {plan.fingerprint[:12]}; now {len(labels)} images, fingerprint {fingerprint[:12]}). "
                "Indices would point at other images, so results would not be comparable. Use a new "
                f"work_dir for the changed data, or delete {path} (and the results made with it) to start over."
            )
        return plan
    plan = make_split_plan(labels, val_fraction=val_fraction, n_splits=n_splits, seed=seed, fingerprint=fingerprint)
    stored["plans"][key] = _to_json(plan)
    temp = path.with_suffix(f".tmp{os.getpid()}")
    temp.write_text(json.dumps(stored))
    os.replace(temp, path)
    return plan
