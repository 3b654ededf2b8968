"""Statistics over cross-validation folds: a summary with an interval, and the corrected paired t-test."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats

from muffin_lib.errors import MuffinError


def _as_losses(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise MuffinError(f"{name}: no fold losses to summarise; run at least one fold first")
    if not np.all(np.isfinite(array)):
        raise MuffinError(f"{name}: fold losses must be finite numbers, got {array.tolist()}")
    return array


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise MuffinError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")


def summarize_losses(losses: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean, std (ddof=1), standard error and a Student-t interval of per-fold losses.

    The K fold estimates share most of their training data, so they are positively correlated and
    the t interval, which treats them as independent, is approximate and slightly optimistic (too
    narrow). The interval is clipped to [0, 1]. With a single fold std, se and the interval are NaN.
    """
    _check_confidence(confidence)
    values = _as_losses(losses, "summarize_losses")
    n = int(values.size)
    mean = float(values.mean())
    if n < 2:
        nan = float("nan")
        return {"mean": mean, "std": nan, "se": nan, "ci_low": nan, "ci_high": nan, "n": n}
    std = float(values.std(ddof=1))
    se = std / math.sqrt(n)
    half_width = float(scipy_stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * se
    return {
        "mean": mean,
        "std": std,
        "se": se,
        # A zero-one risk lies in [0, 1]; with few folds the t interval can reach past either end.
        "ci_low": max(0.0, mean - half_width),
        "ci_high": min(1.0, mean + half_width),
        "n": n,
    }


def corrected_resampled_ttest(
    a: Sequence[float],
    b: Sequence[float],
    n_train: int,
    n_test: int,
    confidence: float = 0.95,
) -> dict:
    """Nadeau & Bengio (2003) corrected resampled t-test of per-fold losses ``a`` vs ``b`` on identical folds.

    The variance of the fold differences is inflated by ``1/k + n_test/n_train`` instead of ``1/k``
    to account for the overlap of training sets between folds. With ``n_test=0`` it is the ordinary
    paired t-test. ``mean_diff`` is ``mean(a - b)``; the p-value is two-sided. When all differences are
    equal the variance is zero: p is 1 if they are all zero and 0 otherwise.
    """
    _check_confidence(confidence)
    first = _as_losses(a, "corrected_resampled_ttest (a)")
    second = _as_losses(b, "corrected_resampled_ttest (b)")
    if first.size != second.size:
        raise MuffinError(
            f"corrected_resampled_ttest needs losses on the same folds, got {first.size} and {second.size} "
            "values; score both configurations on the same fold plan"
        )
    k = int(first.size)
    if k < 2:
        raise MuffinError("corrected_resampled_ttest needs at least 2 folds per configuration")
    if n_train <= 0 or n_test < 0:
        raise MuffinError(f"n_train must be > 0 and n_test >= 0 (samples per fold), got {n_train} and {n_test}")
    differences = first - second
    mean_diff = float(differences.mean())
    variance = float(differences.var(ddof=1))
    se = math.sqrt(variance * (1.0 / k + n_test / n_train))
    df = k - 1
    if se == 0.0:
        t_value = 0.0 if mean_diff == 0.0 else math.copysign(math.inf, mean_diff)
        p_value = 1.0 if mean_diff == 0.0 else 0.0
    else:
        t_value = mean_diff / se
        p_value = float(2.0 * scipy_stats.t.sf(abs(t_value), df=df))
    half_width = float(scipy_stats.t.ppf(0.5 + confidence / 2, df=df)) * se
    return {
        "mean_diff": mean_diff,
        "t": float(t_value),
        "p_value": p_value,
        "ci_low": mean_diff - half_width,
        "ci_high": mean_diff + half_width,
        "df": df,
    }
