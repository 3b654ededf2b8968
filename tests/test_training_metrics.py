"""Metrics against sklearn/scipy and closed forms on known inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from muffin_lib.errors import MuffinError
from muffin_lib.training import metrics

Y_TRUE = [0, 0, 0, 1, 1, 1, 1, 0]
Y_PRED = [0, 1, 0, 1, 1, 0, 1, 0]


def test_zero_one_loss_and_accuracy():
    assert metrics.zero_one_loss(Y_TRUE, Y_PRED) == pytest.approx(2 / 8)
    assert metrics.accuracy(np.array(Y_TRUE), np.array(Y_PRED)) == pytest.approx(6 / 8)


def test_confusion_rows_are_true_labels():
    matrix = metrics.confusion(Y_TRUE, Y_PRED)
    assert matrix.tolist() == [[3, 1], [1, 3]]
    assert metrics.confusion([0, 0], [0, 0]).shape == (2, 2)  # both classes even when one is absent


def test_per_class_report():
    report = metrics.per_class_report(Y_TRUE, Y_PRED, ["chihuahua", "muffin"])
    assert report["muffin"]["precision"] == pytest.approx(3 / 4)
    assert report["muffin"]["recall"] == pytest.approx(3 / 4)
    assert report["chihuahua"]["support"] == 4
    assert report["chihuahua"]["f1-score"] == pytest.approx(0.75)


def test_wilson_interval_matches_closed_form():
    errors, n, z = 10, 100, stats.norm.ppf(0.975)
    p = errors / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    low, high = metrics.binomial_interval(errors, n)
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-9)


def test_exact_interval_matches_clopper_pearson():
    errors, n = 10, 100
    low, high = metrics.binomial_interval(errors, n, confidence=0.9, method="exact")
    assert low == pytest.approx(stats.beta.ppf(0.05, errors, n - errors + 1))
    assert high == pytest.approx(stats.beta.ppf(0.95, errors + 1, n - errors))
    assert metrics.binomial_interval(0, 50, method="exact")[0] == 0.0


def test_bad_input():
    with pytest.raises(MuffinError, match="must match"):
        metrics.zero_one_loss([0, 1], [0])
    with pytest.raises(MuffinError, match="empty"):
        metrics.accuracy([], [])
    with pytest.raises(MuffinError, match="at least one trial"):
        metrics.binomial_interval(0, 0)
    with pytest.raises(MuffinError, match="between 0 and n"):
        metrics.binomial_interval(5, 4)
    with pytest.raises(MuffinError, match="wilson"):
        metrics.binomial_interval(1, 4, method="normal")
