"""One trial: a fresh model trained on one fold's training part and scored once on its held-out part, the
trial-store record it becomes, and the line that reports it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from muffin_lib.errors import MuffinError
from muffin_lib.files import jsonable

log = logging.getLogger(__name__)

# Share of the training folds held back for early stopping when a config asks for it.
EARLY_STOPPING_FRACTION = 0.2
SUMMARY_COLUMNS = ("mean", "std", "se", "ci_low", "ci_high")

Folds = Sequence[tuple[np.ndarray, np.ndarray]]
OnTrial = Callable[[dict], None]


@dataclass
class TrialTask:
    """One (configuration, fold) to train and score; ``setting`` names the cache its images come from."""

    config: object  # recipe.TrainConfig
    setting: tuple[int, str]
    fold: int
    train_idx: np.ndarray
    test_idx: np.ndarray
    config_key: str
    scope: str
    plan_key: str
    fingerprint: str | None
    seed: int
    execution: str  # runtime.execution_key of the run, e.g. "cpu/fp32"; part of config_key
    groups: np.ndarray | None = None  # twin-group id per image of train_idx (None: unknown)
    num_classes: int | None = None  # the model's outputs: the cache's class count (None: from the labels)

    @property
    def identity(self) -> tuple[str, int, str]:
        return (self.config_key, self.fold, self.scope)


def fold_seed(seed: int, fold: int) -> int:
    """A per-fold seed derived from the config seed, so folds never share an initialisation by accident."""
    return int(np.random.SeedSequence([int(seed), int(fold)]).generate_state(1)[0] % (2**31 - 1))


def take_rows(values, indices: np.ndarray) -> torch.Tensor:
    """The rows ``indices`` of a tensor or array, as a tensor (a copy: Ray's object store is read-only)."""
    if isinstance(values, torch.Tensor):
        return values[torch.as_tensor(np.asarray(indices, dtype=np.int64))]
    return torch.from_numpy(np.asarray(values)[np.asarray(indices, dtype=np.int64)])


def _early_stopping_split(train_idx: np.ndarray, labels, seed: int, groups=None) -> tuple:
    """(fit, stop): a seeded, stratified ``EARLY_STOPPING_FRACTION`` of ``train_idx`` held back for early
    stopping, every twin group of ``groups`` (one id per entry of ``train_idx``) on one side."""
    from sklearn.model_selection import train_test_split

    train_idx = np.asarray(train_idx)
    train_labels = np.asarray(take_rows(labels, train_idx))
    if groups is not None:
        from muffin_lib.data.splits import grouped_part

        groups = np.asarray(groups)
        if groups.shape != train_idx.shape:
            raise MuffinError(f"need one twin-group id per training image ({train_idx.size}), got "
                              f"{groups.size}")
        fit_pos, stop_pos = grouped_part(train_labels, groups, EARLY_STOPPING_FRACTION, seed)
        return np.sort(train_idx[fit_pos]), np.sort(train_idx[stop_pos])
    log.warning("no twin groups for the early-stopping split: near-duplicates may straddle fit and stop "
                "images; pass the split plan's groups (SplitPlan.groups) to keep them on one side")
    fit_idx, stop_idx = train_test_split(np.asarray(train_idx), test_size=EARLY_STOPPING_FRACTION,
                                         stratify=train_labels, random_state=seed)
    return np.sort(fit_idx), np.sort(stop_idx)


def run_task(task: TrialTask, images, labels, *, device: str = "auto", progress: bool = False,
             on_epoch: Callable[[dict], bool | None] | None = None) -> dict:
    """Fit a fresh model on ``task``'s training rows of the cache arrays, score it once on its held-out
    rows (plain and with flip test-time augmentation) and return the store record."""
    from muffin_lib.training import loop

    train_images, train_labels = take_rows(images, task.train_idx), take_rows(labels, task.train_idx)
    test_images, test_labels = take_rows(images, task.test_idx), take_rows(labels, task.test_idx)
    fit, stop = (train_images, train_labels), None
    if getattr(task.config, "early_stopping_patience", None):
        positions = np.arange(len(train_labels))
        fit_idx, stop_idx = _early_stopping_split(positions, train_labels, task.seed, task.groups)
        fit = take_rows(train_images, fit_idx), take_rows(train_labels, fit_idx)
        stop = take_rows(train_images, stop_idx), take_rows(train_labels, stop_idx)
    num_classes = task.num_classes
    if num_classes is None:  # no cache said it: one output per class the labels show, at least two
        seen = [int(np.asarray(part).max()) + 1 for part in (train_labels, test_labels) if len(part)]
        num_classes = max([2, *seen])
    started = time.perf_counter()
    fitted = loop.fit(task.config.replace(seed=int(task.seed)), fit, stop, device=device, progress=progress,
                      num_classes=num_classes, on_epoch=on_epoch)
    scores = loop.evaluate(fitted.model, test_images, test_labels, fitted.normalization, device=fitted.device,
                           flip_tta=True)
    seconds = time.perf_counter() - started
    outcome = trial_outcome(fitted, scores, seed=task.seed, n_fit=len(fit[1]), seconds=seconds)
    return trial_record(task, outcome)


def trial_outcome(fitted, scores: dict, *, seed: int, n_fit: int, seconds: float) -> dict:
    """What a trial stores from its fitted model (``loop.fit``) and held-out scores (``loop.evaluate``),
    whoever trained it."""
    from muffin_lib.training import loop, runtime

    n_test = int(scores["n"])
    # Exact errors / n: a float32 zero-one loss would store 0.40909093... for 9/22.
    errors = int(round(float(scores["zero_one_loss"]) * n_test))
    metrics = {**loop.scores_of(errors, n_test, float(scores["loss"])), "history": jsonable(fitted.history)}
    if "flip_tta_errors" in scores:  # loop.evaluate(..., flip_tta=True): the same fold with flip TTA
        metrics["flip_tta_errors"] = int(scores["flip_tta_errors"])
        metrics["flip_tta_zero_one_loss"] = int(scores["flip_tta_errors"]) / n_test
    return {"metrics": metrics, "seed": int(seed), "n_train": int(n_fit), "n_test": n_test,
            "seconds": float(seconds), "device": str(fitted.device),
            "execution": runtime.execution_key(fitted.config.amp, fitted.device, fitted.config)}


def store_fold(store, task: TrialTask, fitted, scores: dict, *, seconds: float) -> dict:
    """Store a fold trained by hand (notebook 07's fold loop) as :func:`run_task` would have, so that
    ``cross_validate`` reuses it instead of training it again. Returns the store record."""
    if getattr(task.config, "early_stopping_patience", None):
        raise MuffinError("a fold trained by hand has no early-stopping split; run early-stopping "
                          "configurations through cross_validate")
    if int(fitted.config.seed) != int(task.seed):
        raise MuffinError(f"fold {task.fold} was trained with seed {fitted.config.seed}, its task says "
                          f"{task.seed}; train it with task.config.replace(seed=task.seed)")
    if "flip_tta_errors" not in scores:
        raise MuffinError(f"fold {task.fold}'s scores lack flip_tta_errors; score the held-out fold with "
                          "loop.evaluate(..., flip_tta=True), as cross_validate does, so that the stored "
                          "trial is the same whoever trained it")
    outcome = trial_outcome(fitted, scores, seed=task.seed, n_fit=len(task.train_idx), seconds=seconds)
    record = trial_record(task, outcome)
    store.add_record(record)
    return record


def trial_record(task: TrialTask, outcome: dict) -> dict:
    """The store record of ``task`` and its ``outcome``; refused when it ran otherwise than its key says."""
    ran = outcome.get("execution", task.execution)
    if ran != task.execution:
        # E.g. a Ray worker without a GPU resolving device 'auto' to the CPU: never store that under this key.
        raise MuffinError(
            f"trial {task.config_key} fold {task.fold} ({task.scope}) was keyed for {task.execution} but "
            f"trained as {ran} (device {outcome.get('device')}); pass an explicit --device that every worker "
            "has (with Ray on a GPU also --gpus-per-trial > 0) and run again"
        )
    return {"config_key": task.config_key, "fold": int(task.fold), "scope": task.scope,
            "config": task.config.to_dict(), "fingerprint": task.fingerprint, "plan_key": task.plan_key,
            "zero_one_loss": outcome["metrics"]["zero_one_loss"], **outcome,
            # The store has no column for it: it is kept in the metrics JSON (returned as "execution").
            "metrics": {**outcome["metrics"], "execution": task.execution}, "execution": task.execution}


def cache_setting(cache) -> tuple[int, str]:
    """``(image_size, color_mode)`` of an ImageCache, read from its tensor shape."""
    channels, height = int(cache.images.shape[1]), int(cache.images.shape[2])
    return height, "grayscale" if channels == 1 else "rgb"


def cache_classes(cache) -> int | None:
    """The class count of an ImageCache (its ``class_names``), or None for an object without them."""
    names = getattr(cache, "class_names", None)
    return len(names) if names else None


def config_setting(config) -> tuple[int, str]:
    """``(image_size, color_mode)`` a configuration trains on: the cache its trials need."""
    return int(config.image_size), str(config.color_mode)


def describe_trial(record: dict, varied: Sequence[str] = ()) -> str:
    """One progress line: ``[trained] lr=0.001 batch_size=32 fold 2 (cv): zero-one loss 0.2150 (41.2 s)``."""
    parts = [f"[{record.get('status', 'trained'):>7}]"]
    parts += [f"{name}={record['config'].get(name)}" for name in varied]
    parts.append(f"fold {record['fold']} ({record['scope']}): zero-one loss {record['zero_one_loss']:.4f}")
    parts.append(f"({record.get('seconds') or 0.0:.1f} s)")
    return " ".join(parts)


def print_trial(varied: Sequence[str] = ()) -> OnTrial:
    """An ``on_trial`` that prints :func:`describe_trial`'s line for every trial."""
    return lambda record: print(describe_trial(record, varied), flush=True)
