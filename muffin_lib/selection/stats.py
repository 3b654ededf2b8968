"""Statistics over cross-validation folds and paired comparisons of classifiers.

A summary of fold losses with a (Nadeau-Bengio corrected) t interval, the corrected resampled paired
t-test, the exact McNemar test of two classifiers scored on the same items, and Holm's adjustment for
comparing many pairs at once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

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


def summarize_losses(
    losses: Sequence[float],
    confidence: float = 0.95,
    *,
    test_train_ratio: float | None = None,
) -> dict:
    """Mean, std (ddof=1), standard error and a Student-t interval (df = K-1) of K per-fold losses.

    The K fold estimates of cross-validation share most of their training data (with 5-fold CV any two
    training sets overlap in 3/4 of the data), so they are positively correlated. The naive standard
    error ``std / sqrt(K)`` treats them as independent and is too small, so the naive interval is too
    narrow. Nadeau & Bengio (2003) correct the variance of the mean by ``1/K + n_test/n_train``
    instead of ``1/K``; with ``test_train_ratio = n_test / n_train`` per fold (0.25 for 5-fold CV)
    the standard error becomes ``std * sqrt(1/K + test_train_ratio)`` and ``ci_low``/``ci_high`` are
    the corrected t interval. This is the honest choice for CV over folds that share training data:
    the correction is itself a heuristic, but the naive interval is systematically optimistic.
    Without ``test_train_ratio`` the naive interval is reported in ``ci_low``/``ci_high`` (the
    previous behaviour).

    Returns ``mean, std, se, ci_low, ci_high, naive_ci_low, naive_ci_high, interval, n``, where
    ``interval`` names which interval ``ci_low``/``ci_high`` are, e.g. "corrected t (Nadeau-Bengio),
    95%" or "naive t, 95%". Intervals are clipped to [0, 1]. With a single fold std, se and the
    intervals are NaN.
    """
    _check_confidence(confidence)
    if test_train_ratio is not None:
        ratio = float(test_train_ratio)
        if not (math.isfinite(ratio) and ratio > 0.0):
            raise MuffinError(
                f"test_train_ratio must be n_test / n_train per fold, a number > 0 (e.g. 0.25 for 5-fold CV), "
                f"got {test_train_ratio}; pass None for the naive interval"
            )
    values = _as_losses(losses, "summarize_losses")
    n = int(values.size)
    mean = float(values.mean())
    percent = f"{100 * confidence:g}%"
    interval = f"corrected t (Nadeau-Bengio), {percent}" if test_train_ratio is not None else f"naive t, {percent}"
    if n < 2:
        nan = float("nan")
        return {
            "mean": mean,
            "std": nan,
            "se": nan,
            "ci_low": nan,
            "ci_high": nan,
            "naive_ci_low": nan,
            "naive_ci_high": nan,
            "interval": interval,
            "n": n,
        }
    std = float(values.std(ddof=1))
    naive_se = std / math.sqrt(n)
    se = naive_se if test_train_ratio is None else std * math.sqrt(1.0 / n + float(test_train_ratio))
    t_quantile = float(scipy_stats.t.ppf(0.5 + confidence / 2, df=n - 1))

    def clipped(half_width: float) -> tuple[float, float]:
        # A zero-one risk lies in [0, 1]; with few folds the t interval can reach past either end.
        return max(0.0, mean - half_width), min(1.0, mean + half_width)

    naive_low, naive_high = clipped(t_quantile * naive_se)
    ci_low, ci_high = clipped(t_quantile * se)
    return {
        "mean": mean,
        "std": std,
        "se": se,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "naive_ci_low": naive_low,
        "naive_ci_high": naive_high,
        "interval": interval,
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


def _as_correct(values: Sequence[bool], name: str) -> np.ndarray:
    array = np.asarray(values).ravel()
    if array.size == 0:
        raise MuffinError(f"{name}: no scored items; pass one 'prediction correct' flag per item")
    if array.dtype != np.bool_:
        if not np.all(np.isin(array, (0, 1))):
            raise MuffinError(f"{name}: expected booleans (prediction correct per item), got values other than 0/1")
        array = array.astype(bool)
    return array


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
    """Exact McNemar test of two classifiers scored on the same items.

    ``correct_a[i]`` / ``correct_b[i]`` say whether each classifier got item ``i`` right. Only the
    discordant items matter: under the null of equal error rates each is equally likely to be an
    error of ``a`` or of ``b``, so the count ``only_a_wrong`` is Binomial(discordant, 0.5). Returns
    ``only_a_wrong`` (a wrong, b right), ``only_b_wrong`` (b wrong, a right), ``n`` (items) and the
    two-sided exact ``p_value`` (1.0 when there are no discordant items).
    """
    first = _as_correct(correct_a, "mcnemar_exact (correct_a)")
    second = _as_correct(correct_b, "mcnemar_exact (correct_b)")
    if first.size != second.size:
        raise MuffinError(
            f"mcnemar_exact needs both classifiers scored on the same items, got {first.size} and "
            f"{second.size} flags; score both on the same test set in the same order"
        )
    only_a_wrong = int(np.count_nonzero(~first & second))
    only_b_wrong = int(np.count_nonzero(first & ~second))
    discordant = only_a_wrong + only_b_wrong
    p_value = 1.0 if discordant == 0 else float(scipy_stats.binomtest(only_a_wrong, discordant, p=0.5).pvalue)
    return {"only_a_wrong": only_a_wrong, "only_b_wrong": only_b_wrong, "n": int(first.size), "p_value": p_value}


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values, in the input order.

    With the m p-values sorted ascending, the i-th (0-based) is multiplied by ``m - i``; a running
    maximum keeps the adjusted values monotone and they are capped at 1. Rejecting where the adjusted
    p-value is below alpha controls the family-wise error rate at alpha.
    """
    values = np.asarray(p_values, dtype=np.float64).ravel()
    if values.size == 0:
        return []
    if not np.all((values >= 0.0) & (values <= 1.0)):
        raise MuffinError(f"holm_adjust: p-values must lie in [0, 1], got {values.tolist()}")
    m = int(values.size)
    order = np.argsort(values, kind="stable")
    scaled = values[order] * (m - np.arange(m))
    adjusted_sorted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    adjusted = np.empty(m)
    adjusted[order] = adjusted_sorted
    return [float(p) for p in adjusted]


def paired_mcnemar_table(correct: Mapping[str, Sequence[bool]], alpha: float = 0.05) -> list[dict]:
    """Exact McNemar test for every pair of classifiers, with Holm-adjusted p-values over all pairs.

    ``correct`` maps a name to its per-item "prediction correct" flags (all on the same items). One row
    per pair ``(a, b)`` from ``itertools.combinations`` in insertion order, with ``a``, ``b``, the
    :func:`mcnemar_exact` fields, ``p_holm``, ``significant`` (``p_holm < alpha``) and ``better``
    (the name with fewer errors on the discordant items, or None on a tie).
    """
    if not 0.0 < alpha < 1.0:
        raise MuffinError(f"alpha must be between 0 and 1 (e.g. 0.05), got {alpha}")
    if len(correct) < 2:
        raise MuffinError(f"paired_mcnemar_table needs at least 2 classifiers to compare, got {len(correct)}")
    rows = []
    for name_a, name_b in itertools.combinations(correct, 2):
        result = mcnemar_exact(correct[name_a], correct[name_b])
        if result["only_a_wrong"] < result["only_b_wrong"]:
            better = name_a
        elif result["only_b_wrong"] < result["only_a_wrong"]:
            better = name_b
        else:
            better = None
        rows.append({"a": name_a, "b": name_b, **result, "better": better})
    for row, p_holm in zip(rows, holm_adjust([row["p_value"] for row in rows]), strict=True):
        row["p_holm"] = p_holm
        row["significant"] = p_holm < alpha
    return rows
