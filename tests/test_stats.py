"""Fold statistics checked against scipy on known inputs."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from muffin_lib.errors import MuffinError
from muffin_lib.stats import corrected_resampled_ttest, summarize_losses

LOSSES_A = [0.21, 0.18, 0.25, 0.19, 0.22]
LOSSES_B = [0.24, 0.20, 0.27, 0.18, 0.26]


def test_summary_matches_scipy_t_interval():
    summary = summarize_losses(LOSSES_A, confidence=0.9)
    values = np.array(LOSSES_A)
    low, high = scipy_stats.t.interval(0.9, df=4, loc=values.mean(), scale=scipy_stats.sem(values))
    assert summary["n"] == 5
    assert summary["mean"] == pytest.approx(values.mean())
    assert summary["std"] == pytest.approx(values.std(ddof=1))
    assert summary["se"] == pytest.approx(scipy_stats.sem(values))
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx((low, high))


def test_summary_of_one_fold_has_no_spread():
    summary = summarize_losses([0.3])
    assert summary["mean"] == 0.3 and summary["n"] == 1
    assert math.isnan(summary["std"]) and math.isnan(summary["ci_low"])


def test_uncorrected_test_is_scipy_paired_ttest():
    result = corrected_resampled_ttest(LOSSES_A, LOSSES_B, n_train=100, n_test=0)
    reference = scipy_stats.ttest_rel(LOSSES_A, LOSSES_B)
    assert result["t"] == pytest.approx(reference.statistic)
    assert result["p_value"] == pytest.approx(reference.pvalue)
    assert result["df"] == 4
    assert result["mean_diff"] == pytest.approx(np.mean(np.subtract(LOSSES_A, LOSSES_B)))
    low, high = reference.confidence_interval(0.95)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((low, high))


def test_correction_equals_one_sample_test_on_rescaled_differences():
    # Corrected variance = var * (1/k + r) = var/k * (1 + k r): the same as ttest_1samp on differences
    # whose spread is scaled by sqrt(1 + k r).
    k, n_train, n_test = 5, 400, 100
    differences = np.subtract(LOSSES_A, LOSSES_B)
    inflation = math.sqrt(1 + k * n_test / n_train)
    rescaled = differences.mean() + (differences - differences.mean()) * inflation
    reference = scipy_stats.ttest_1samp(rescaled, 0.0)
    result = corrected_resampled_ttest(LOSSES_A, LOSSES_B, n_train=n_train, n_test=n_test)
    assert result["t"] == pytest.approx(reference.statistic)
    assert result["p_value"] == pytest.approx(reference.pvalue)
    uncorrected = corrected_resampled_ttest(LOSSES_A, LOSSES_B, n_train=n_train, n_test=0)
    assert abs(result["t"]) < abs(uncorrected["t"])
    assert result["p_value"] > uncorrected["p_value"]


def test_identical_losses_give_no_evidence():
    result = corrected_resampled_ttest(LOSSES_A, LOSSES_A, n_train=80, n_test=20)
    assert result["mean_diff"] == 0.0 and result["t"] == 0.0 and result["p_value"] == 1.0


def test_bad_inputs_are_clear_errors():
    with pytest.raises(MuffinError, match="same folds"):
        corrected_resampled_ttest([0.1, 0.2], [0.1, 0.2, 0.3], 10, 5)
    with pytest.raises(MuffinError, match="no fold losses"):
        summarize_losses([])
    with pytest.raises(MuffinError, match="confidence"):
        summarize_losses([0.1, 0.2], confidence=95)


def test_interval_is_clipped_to_the_range_of_a_risk():
    summary = summarize_losses([0.0, 0.3])  # two folds: the t interval is wider than [0, 1]
    assert summary["ci_low"] == 0.0 and summary["ci_high"] == 1.0
