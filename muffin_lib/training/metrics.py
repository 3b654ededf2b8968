"""Scores of a classifier: zero-one loss (the study's measure), accuracy, confusion, per-class report, and
a binomial confidence interval for an error rate."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skmetrics

from muffin_lib.errors import MuffinError


def _as_label_arrays(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise MuffinError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}; they must match")
    if y_true.size == 0:
        raise MuffinError("no labels to score: y_true and y_pred are empty")
    return y_true, y_pred


def zero_one_loss(y_true, y_pred) -> float:
    """Fraction of misclassified samples."""
    y_true, y_pred = _as_label_arrays(y_true, y_pred)
    return float(skmetrics.zero_one_loss(y_true, y_pred))


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = _as_label_arrays(y_true, y_pred)
    return float(skmetrics.accuracy_score(y_true, y_pred))


def confusion(y_true, y_pred, n_classes: int = 2) -> np.ndarray:
    """``n_classes`` x ``n_classes`` counts; row = true label, column = predicted label."""
    y_true, y_pred = _as_label_arrays(y_true, y_pred)
    return skmetrics.confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))


def per_class_report(y_true, y_pred, class_names: Sequence[str]) -> dict:
    """Precision, recall, F1 and support per class (plus macro/weighted averages), keyed by class name."""
    y_true, y_pred = _as_label_arrays(y_true, y_pred)
    return skmetrics.classification_report(y_true, y_pred, labels=list(range(len(class_names))),
                                           target_names=list(class_names), output_dict=True, zero_division=0)


def binomial_interval(errors: int, n: int, confidence: float = 0.95,
                      method: str = "wilson") -> tuple[float, float]:
    """Confidence interval for an error rate of ``errors`` out of ``n``; wilson or exact (Clopper-Pearson)."""
    if method not in ("wilson", "exact"):
        raise MuffinError(f"binomial_interval method must be 'wilson' or 'exact', got {method!r}")
    if n <= 0:
        raise MuffinError(f"binomial_interval needs at least one trial, got n={n}")
    if not 0 <= errors <= n:
        raise MuffinError(f"errors must lie between 0 and n={n}, got {errors}")
    if not 0 < confidence < 1:
        raise MuffinError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    interval = stats.binomtest(int(errors), int(n)).proportion_ci(confidence_level=confidence, method=method)
    return float(interval.low), float(interval.high)


def scores(correct, confidence: float = 0.95) -> dict:
    """Zero-one loss of a boolean "prediction correct" array, with its Wilson interval."""
    correct = np.asarray(correct, dtype=bool)
    n = int(correct.size)
    if n == 0:
        nan = float("nan")
        return {"zero_one_loss": nan, "errors": 0, "n": 0, "ci_low": nan, "ci_high": nan}
    errors = int(n - correct.sum())
    low, high = binomial_interval(errors, n, confidence, method="wilson")
    return {"zero_one_loss": errors / n, "errors": errors, "n": n, "ci_low": float(low),
            "ci_high": float(high)}


def scores_by_part(correct, twin_free, confidence: float = 0.95) -> dict:
    """``{"twin_free": ..., "all": ..., "with_train_twin": ...}`` scores of one candidate's test predictions;
    ``twin_free`` is ``splits.twin_free_test_images``' mask, ``with_train_twin`` scores the rest."""
    correct, twin_free = np.asarray(correct, dtype=bool), np.asarray(twin_free, dtype=bool)
    if correct.shape != twin_free.shape:
        raise MuffinError(f"{correct.size} predictions but a twin-free mask of {twin_free.size} test images")
    return {"twin_free": scores(correct[twin_free], confidence), "all": scores(correct, confidence),
            "with_train_twin": scores(correct[~twin_free], confidence)}
