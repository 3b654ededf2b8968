"""Fold statistics checked against scipy on known inputs."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from muffin_lib.errors import MuffinError
from muffin_lib.selection.stats import (
    corrected_resampled_ttest,
    holm_adjust,
    mcnemar_exact,
    paired_mcnemar_table,
    summarize_losses,
)

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


def test_naive_summary_reports_its_interval():
    summary = summarize_losses(LOSSES_A, confidence=0.9)
    assert summary["interval"] == "naive t, 90%"
    assert (summary["naive_ci_low"], summary["naive_ci_high"]) == (summary["ci_low"], summary["ci_high"])


def test_corrected_summary_widens_the_interval_by_nadeau_bengio():
    values = np.array(LOSSES_A)
    k, ratio = 5, 0.25
    naive = summarize_losses(LOSSES_A)
    corrected = summarize_losses(LOSSES_A, test_train_ratio=ratio)
    assert corrected["interval"] == "corrected t (Nadeau-Bengio), 95%"
    assert corrected["se"] == pytest.approx(values.std(ddof=1) * math.sqrt(1 / k + ratio))
    low, high = scipy_stats.t.interval(0.95, df=k - 1, loc=values.mean(), scale=corrected["se"])
    assert (corrected["ci_low"], corrected["ci_high"]) == pytest.approx((low, high))
    assert (corrected["naive_ci_low"], corrected["naive_ci_high"]) == pytest.approx(
        (naive["ci_low"], naive["ci_high"])
    )
    widening = (corrected["ci_high"] - corrected["ci_low"]) / (naive["ci_high"] - naive["ci_low"])
    assert widening == pytest.approx(math.sqrt(0.45) / math.sqrt(0.2))  # 1.5
    assert corrected["mean"] == naive["mean"] and corrected["std"] == naive["std"]


def test_corrected_summary_of_one_fold_keeps_nans_and_clips():
    single = summarize_losses([0.3], test_train_ratio=0.25)
    assert math.isnan(single["ci_low"]) and math.isnan(single["naive_ci_high"])
    assert single["interval"].startswith("corrected")
    wide = summarize_losses([0.0, 0.3], test_train_ratio=0.5)
    assert wide["ci_low"] == 0.0 and wide["ci_high"] == 1.0


@pytest.mark.parametrize("ratio", [0, -0.25, float("nan")])
def test_bad_test_train_ratio_is_a_clear_error(ratio):
    with pytest.raises(MuffinError, match="test_train_ratio"):
        summarize_losses(LOSSES_A, test_train_ratio=ratio)


def test_mcnemar_matches_exact_binomial_on_discordant_items():
    # 10 items: a wrong / b right on items 0-1, b wrong / a right on items 2-8, both right on item 9.
    correct_a = [False, False] + [True] * 7 + [True]
    correct_b = [True, True] + [False] * 7 + [True]
    result = mcnemar_exact(correct_a, correct_b)
    assert (result["only_a_wrong"], result["only_b_wrong"], result["n"]) == (2, 7, 10)
    assert result["p_value"] == pytest.approx(scipy_stats.binomtest(2, 9, p=0.5).pvalue)
    assert result["p_value"] == pytest.approx(2 * (1 + 9 + 36) / 2**9)  # P(X<=2) + P(X>=7), X ~ Bin(9, 1/2)
    swapped = mcnemar_exact(correct_b, correct_a)
    assert (swapped["only_a_wrong"], swapped["only_b_wrong"]) == (7, 2)
    assert swapped["p_value"] == pytest.approx(result["p_value"])


def test_mcnemar_without_discordant_items_is_no_evidence():
    result = mcnemar_exact([True, False, True], [True, False, True])
    assert result == {"only_a_wrong": 0, "only_b_wrong": 0, "n": 3, "p_value": 1.0}


def test_mcnemar_bad_inputs_are_clear_errors():
    with pytest.raises(MuffinError, match="same items"):
        mcnemar_exact([True, False], [True])
    with pytest.raises(MuffinError, match="no scored items"):
        mcnemar_exact([], [])


def test_holm_matches_hand_computation():
    # Sorted: 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06.
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.5, 0.2]) == pytest.approx([0.5, 0.4])
    assert holm_adjust([0.4, 0.6, 0.9]) == pytest.approx([1.0, 1.0, 1.0])
    assert holm_adjust([]) == []


def test_paired_table_covers_every_pair_with_holm():
    rng = np.random.default_rng(0)
    truth_noise = rng.random(200)
    correct = {
        "strong": truth_noise < 0.9,
        "medium": truth_noise < 0.7,
        "weak": rng.random(200) < 0.5,
    }
    table = paired_mcnemar_table(correct)
    pairs = [(row["a"], row["b"]) for row in table]
    assert pairs == [("strong", "medium"), ("strong", "weak"), ("medium", "weak")]
    assert all(row["p_holm"] >= row["p_value"] for row in table)
    assert [row["p_holm"] for row in table] == pytest.approx(holm_adjust([row["p_value"] for row in table]))
    first = table[0]
    assert first["only_a_wrong"] == 0 and first["only_b_wrong"] > 0 and first["better"] == "strong"
    assert first["significant"] == (first["p_holm"] < 0.05)
    tie = paired_mcnemar_table({"x": [True, False], "y": [False, True]})
    assert tie[0]["better"] is None and tie[0]["p_value"] == 1.0 and not tie[0]["significant"]


def test_cv_comparisons_are_holm_adjusted_and_judged_by_p_holm(cv_result):
    from muffin_lib.selection.cv import compare_all
    from muffin_lib.study.report.selection import comparison_finding
    from muffin_lib.training.recipe import TrainConfig

    losses = {
        "a": [0.10, 0.11, 0.10, 0.12, 0.10],
        "b": [0.20, 0.21, 0.21, 0.22, 0.20],
        "c": [0.16, 0.22, 0.12, 0.21, 0.17],
    }
    configs = {name: TrainConfig(lr=lr) for name, lr in zip(losses, (1e-3, 2e-3, 3e-3), strict=True)}
    results = {name: cv_result(configs[name], losses[name]) for name in losses}
    rows = compare_all(configs, results)
    assert [(row["a"], row["b"]) for row in rows] == [("a", "b"), ("a", "c"), ("b", "c")]
    p_values = [row["p_value"] for row in rows]
    assert [row["p_holm"] for row in rows] == pytest.approx(holm_adjust(p_values))
    assert [row["significant"] for row in rows] == [row["p_holm"] < 0.05 for row in rows]
    strong, borderline, null = rows
    # a vs c: significant before the correction, not after it; a vs b survives it.
    assert borderline["p_value"] < 0.05 <= borderline["p_holm"]
    assert strong["p_holm"] < 0.05 and null["p_holm"] >= 0.05
    assert "not a significant difference" in comparison_finding(borderline)
    assert f"p = {borderline['p_value']:.3f}" in comparison_finding(borderline)
    assert f"Holm-adjusted {borderline['p_holm']:.3f}" in comparison_finding(borderline)
    assert ": a significant difference" in comparison_finding(strong)
