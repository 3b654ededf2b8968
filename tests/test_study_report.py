"""The sentences and tables the notebooks show: each states the numbers it is given."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from muffin_lib.study import report
from muffin_lib.training.recipe import TrainConfig


def test_format_ci_leaves_out_unknown_intervals():
    assert report.format_ci(0.1234, 0.1, 0.15) == "0.123 [0.100, 0.150]"
    assert report.format_ci(0.5, math.nan, 0.6) == "0.500"


def test_twins_finding_states_the_counts():
    near = {"n_groups": 3, "n_images_in_groups": 7, "test_with_train_twin": 2, "n_groups_within_train": 1,
            "conflicting_labels": [["train/muffin/a.jpg", "test/chihuahua/b.jpg"]]}
    text = report.twins_finding(near, n_train=100, n_test=40)
    assert "3 groups" in text and "7 images" in text and "2 of the 40 test images (5.0%)" in text
    assert "1 group carries conflicting labels" in text and "1 group lies inside the training split" in text


def test_twin_pairs_to_show_prefers_train_test_pairs():
    groups = [["test/muffin/t.jpg", "train/muffin/a.jpg"], ["train/chihuahua/b.jpg", "train/chihuahua/c.jpg"]]
    assert report.twin_pairs_to_show(groups, n=1) == [("train/muffin/a.jpg", "test/muffin/t.jpg")]
    assert len(report.twin_pairs_to_show(groups, n=5)) == 2


def test_validation_summary_and_most_confident_errors():
    predictions = {"relpaths": ["a", "b", "c", "d"], "labels": [0, 0, 1, 1], "predicted": [0, 1, 1, 0],
                   "confidence": [0.9, 0.9, 0.8, 0.6]}
    summary = report.validation_summary(predictions)
    assert summary["errors"] == 2 and summary["n"] == 4 and summary["confusion"] == [[1, 1], [1, 1]]
    wrong = report.most_confident_errors(predictions, 1)
    assert wrong == [{"relpath": "b", "label": 0, "predicted": 1, "confidence": 0.9}]


def test_resize_finding_and_grid_plan():
    assert "keeps 50% of a shown photo's area" in report.resize_finding([(200, 100)], 100, "rgb")
    base = TrainConfig(image_size=64, epochs=8)
    folds = [(list(range(80)), list(range(80, 100)))] * 5
    text = report.grid_plan(base, {"lr": [1e-3, 3e-3, 1e-2], "batch_size": [32, 64, 128]}, folds, [3], 100)
    assert "9 configurations at 3 -> 8 epochs" in text and "at most **60 trials** instead of 45" in text
    plain = report.grid_plan(base, {"lr": [1e-3, 3e-3]}, folds, [], 100)
    assert "2 configurations x 5 folds = **10 trials** at 8 epochs" in plain


def test_cv_table_and_finding_carry_the_corrected_interval():
    class Result:
        def __init__(self, mean):
            self.summary = {"mean": mean, "ci_low": mean - 0.02, "ci_high": mean + 0.02,
                            "naive_ci_low": mean - 0.01,
                            "naive_ci_high": mean + 0.01, "interval": "corrected t (Nadeau-Bengio), 95%"}
            self.losses = [mean] * 5
            self.config = TrainConfig(image_size=64, epochs=8)  # the quick budget

    results = {"simple_cnn": Result(0.12), "deeper_cnn": Result(0.10)}
    table = report.cv_table(results)
    assert table.loc["deeper_cnn", "cv"] == 0.10 and table.loc["deeper_cnn", "cv_high"] == pytest.approx(0.12)
    text = report.cv_finding(results, 5)
    # The sentence names the settings that produced the numbers, and that they are not the deployed recipe.
    assert text.startswith("5-fold twin-grouped CV zero-one risk at 64 px, 8 epochs "
                           "(profile quick: cheaper than the "
                           "deployed 128 px / 15 epochs) (corrected t (Nadeau-Bengio), 95% interval)")
    assert text.index("deeper_cnn") < text.index("simple_cnn") and "(lowest: deeper_cnn)" in text


def test_per_class_frame_drops_accuracy_and_keeps_integer_support():
    frame = report.per_class_frame({"muffin": {"precision": 1.0, "recall": 0.5, "f1-score": 0.667,
                                               "support": 2.0},
                                    "accuracy": 0.75})
    assert list(frame.index) == ["muffin"] and frame.loc["muffin", "support"] == 2
    assert isinstance(frame, pd.DataFrame)


def test_validation_calibration_says_its_temperature_was_fitted_on_the_same_photos():
    from types import SimpleNamespace

    from muffin_lib.training import calibration

    # An overconfident model: 80 % right at confidence 0.99.
    labels = [0] * 8 + [1] * 2
    proba = [[0.99, 0.01]] * 10
    temperature = calibration.fit_temperature(np.asarray(proba), labels)
    run = SimpleNamespace(val_predictions={"probabilities": proba, "labels": labels}, temperature=temperature)
    check, text = report.validation_calibration(run)
    assert check["before"]["ece"] == pytest.approx(0.19)
    assert check["after"]["ece"] < 0.05 and temperature > 1
    assert "overconfident" in text and "fitted on these same photos" in text and "09" in text
