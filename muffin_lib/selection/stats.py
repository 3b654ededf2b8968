"""Statistics over CV folds and paired comparisons: fold summaries with a (Nadeau-Bengio corrected) t
interval, the corrected resampled t-test, the exact McNemar test and Holm's adjustment over many pairs."""

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


def summarize_losses(losses: Sequence[float], confidence: float = 0.95, *,
                     test_train_ratio: float | None = None) -> dict:
    """Mean, std (ddof=1), standard error and a Student-t interval (df = K-1) of K per-fold losses.

    CV folds share most of their training data, so their losses are positively correlated and the naive
    ``std / sqrt(K)`` is too small. With ``test_train_ratio`` (n_test / n_train per fold, 0.25 for 5-fold
    CV) ``se`` is Nadeau & Bengio's (2003) ``std * sqrt(1/K + test_train_ratio)`` and ``ci_low``/``ci_high``
    the corrected t interval; without it the naive ones. ``naive_ci_low``/``naive_ci_high`` are always the
    naive interval, ``interval`` names the reported one (e.g. "naive t, 95%"). Intervals are clipped to
    [0, 1]; with a single fold std, se and the intervals are NaN.
    """
    _check_confidence(confidence)
    ratio = None if test_train_ratio is None else float(test_train_ratio)
    if ratio is not None and not (math.isfinite(ratio) and ratio > 0.0):
        raise MuffinError(
            f"test_train_ratio must be n_test / n_train per fold, a number > 0 (e.g. 0.25 for 5-fold CV), "
            f"got {test_train_ratio}; pass None for the naive interval"
        )
    values = _as_losses(losses, "summarize_losses")
    n, mean = int(values.size), float(values.mean())
    percent = f"{100 * confidence:g}%"
    interval = f"naive t, {percent}" if ratio is None else f"corrected t (Nadeau-Bengio), {percent}"
    keys = ("mean", "std", "se", "ci_low", "ci_high", "naive_ci_low", "naive_ci_high")
    if n < 2:
        return {**dict.fromkeys(keys, float("nan")), "mean": mean, "interval": interval, "n": n}
    std = float(values.std(ddof=1))
    naive_se = std / math.sqrt(n)
    se = naive_se if ratio is None else std * math.sqrt(1.0 / n + ratio)
    t_quantile = float(scipy_stats.t.ppf(0.5 + confidence / 2, df=n - 1))
    # A zero-one risk lies in [0, 1]; with few folds the t interval can reach past either end.
    ends = [(max(0.0, mean - t_quantile * s), min(1.0, mean + t_quantile * s)) for s in (se, naive_se)]
    return {**dict(zip(keys, (mean, std, se, *ends[0], *ends[1]), strict=True)), "interval": interval, "n": n}


def corrected_resampled_ttest(a: Sequence[float], b: Sequence[float], n_train: int, n_test: int,
                              confidence: float = 0.95) -> dict:
    """Nadeau & Bengio (2003) corrected resampled t-test of per-fold losses ``a`` vs ``b`` on identical folds.

    The variance of the differences is scaled by ``1/k + n_test/n_train`` instead of ``1/k`` for the overlap
    of the training sets (``n_test=0``: the ordinary paired t-test). ``mean_diff`` is ``mean(a - b)``, p
    two-sided; with zero variance p is 1 if all differences are zero and 0 otherwise.
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
        raise MuffinError(f"n_train must be > 0 and n_test >= 0 (samples per fold), got {n_train} and "
                          f"{n_test}")
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
    return {"mean_diff": mean_diff, "t": float(t_value), "p_value": p_value, "ci_low": mean_diff - half_width,
            "ci_high": mean_diff + half_width, "df": df}


def _as_correct(values: Sequence[bool], name: str) -> np.ndarray:
    array = np.asarray(values).ravel()
    if array.size == 0:
        raise MuffinError(f"{name}: no scored items; pass one 'prediction correct' flag per item")
    if array.dtype != np.bool_:
        if not np.all(np.isin(array, (0, 1))):
            raise MuffinError(f"{name}: expected booleans (prediction correct per item), got values other "
                              "than 0/1")
        array = array.astype(bool)
    return array


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
    """Exact McNemar test of two classifiers scored on the same items (``correct_a[i]``: a got item i right).

    Under equal error rates ``only_a_wrong`` is Binomial(discordant, 0.5). Returns ``only_a_wrong`` (a wrong,
    b right), ``only_b_wrong``, ``n`` (items) and the two-sided exact ``p_value`` (1.0 if none discordant).
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
    return {"only_a_wrong": only_a_wrong, "only_b_wrong": only_b_wrong, "n": int(first.size),
            "p_value": p_value}


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values, in the input order: rejecting where one is below alpha
    controls the family-wise error rate at alpha."""
    values = np.asarray(p_values, dtype=np.float64).ravel()
    if values.size == 0:
        return []
    if not np.all((values >= 0.0) & (values <= 1.0)):
        raise MuffinError(f"holm_adjust: p-values must lie in [0, 1], got {values.tolist()}")
    m = int(values.size)
    order = np.argsort(values, kind="stable")
    scaled = values[order] * (m - np.arange(m))
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)  # monotone, capped at 1
    return [float(p) for p in adjusted]


def add_holm(rows: list[dict], alpha: float) -> list[dict]:
    """``rows`` (each with a ``p_value``) with ``p_holm`` (Holm over all of them) and ``significant``."""
    for row, p_holm in zip(rows, holm_adjust([row["p_value"] for row in rows]), strict=True):
        row["p_holm"] = p_holm
        row["significant"] = p_holm < alpha
    return rows


def paired_mcnemar_table(correct: Mapping[str, Sequence[bool]], alpha: float = 0.05) -> list[dict]:
    """Exact McNemar test for every pair (insertion order) of ``correct`` (name -> per-item "correct" flags):
    rows with ``a``, ``b``, the :func:`mcnemar_exact` fields, ``better`` (fewer discordant errors; None on a
    tie) and :func:`add_holm`'s ``p_holm`` and ``significant``."""
    if not 0.0 < alpha < 1.0:
        raise MuffinError(f"alpha must be between 0 and 1 (e.g. 0.05), got {alpha}")
    if len(correct) < 2:
        raise MuffinError(f"paired_mcnemar_table needs at least 2 classifiers to compare, got {len(correct)}")
    rows = []
    for name_a, name_b in itertools.combinations(correct, 2):
        result = mcnemar_exact(correct[name_a], correct[name_b])
        a_wrong, b_wrong = result["only_a_wrong"], result["only_b_wrong"]
        better = name_a if a_wrong < b_wrong else name_b if b_wrong < a_wrong else None
        rows.append({"a": name_a, "b": name_b, **result, "better": better})
    return add_holm(rows, alpha)
