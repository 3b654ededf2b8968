"""The recipe's keys, which must not move, and the recipe-comparison scripts of benchmarks/."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from muffin_lib.training.recipe import TRANSFER_RECIPE, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32


def _config(**changes) -> TrainConfig:
    base = {"model": "simple_cnn", "image_size": SIZE, "color_mode": "grayscale", "epochs": 2,
            "batch_size": 16, "lr": 1e-3, "augment": "flip_rotate", "label_smoothing": 0.1}
    return TrainConfig(**{**base, **changes})


# ----------------------------------------------------------------------------- keys and config


def test_keys_of_existing_configs_do_not_move():
    # Trial stores and checkpoints on disk are found by these keys.
    assert TrainConfig().key() == "8de977572b32"
    # 08's fine-tuning of 2026-12-04 (was 6a8b2ecd09d6 for the ResNet-18: ARCHITECTURE_VERSIONS)
    assert TrainConfig(model="transfer", pretrained=True, epochs=6, lr=3e-4, augment="flip_rotate",
                       label_smoothing=0.0).key() == "0a8cbc8b1ed5"
    assert TRANSFER_RECIPE.key() == "1d99e0e01c64"  # the linear probe at 224 px (issue 27)
    assert TrainConfig(model="deeper_cnn", epochs=30, seed=2).key() == "099788c94454"
    assert _config(label_smoothing=0.0).key() == "599724095518"  # test_training_engine's _config()


def test_recipe_variants_are_valid_configs():
    variants = runpy.run_path(str(ROOT / "benchmarks" / "recipe_variants.py"),
                              run_name="not_main")["VARIANTS"]
    keys = set()
    for model, epochs, seeds, changes in variants.values():
        keys.add(TrainConfig().replace(model=model, epochs=epochs, seed=seeds[0], **changes).key())
    assert len(keys) == len(variants)


def test_recipe_cv_candidates_are_distinct_changes_of_the_deployed_recipe():
    script = runpy.run_path(str(ROOT / "benchmarks" / "recipe_cv.py"), run_name="not_main")
    deployed = TrainConfig(model=script["MODEL"])
    trained = {name: changes for name, changes in script["CANDIDATES"].items() if name != "flip_tta"}
    keys = {deployed.replace(**changes).key() for changes in trained.values()}
    assert len(keys) == len(trained) and deployed.key() not in keys
    assert script["CANDIDATES"]["flip_tta"] == {}  # scored on the deployed trials: nothing trains


def test_recipe_cv_flip_tta_reads_the_trials_own_flip_scores_and_refuses_trials_without_them(cv_result):
    flip_tta = runpy.run_path(str(ROOT / "benchmarks" / "recipe_cv.py"), run_name="not_main")["flip_tta"]
    result = cv_result(TrainConfig(model="deeper_cnn"), [0.08, 0.06])
    result.trials = [{"metrics": {"zero_one_loss": v, "flip_tta_zero_one_loss": v - 0.01}}
                     for v in result.losses]
    assert flip_tta(result).losses == pytest.approx([0.07, 0.05]) and result.losses == [0.08, 0.06]
    # stored before trials recorded it
    result.trials = [{"metrics": {"zero_one_loss": v}} for v in result.losses]
    with pytest.raises(SystemExit, match="flip test-time augmentation"):
        flip_tta(result)


def test_recipe_cv_with_one_seed_is_the_librarys_paired_test_and_with_two_averages_each_fold(cv_result):
    from muffin_lib.selection.cv import compare_configs

    compare = runpy.run_path(str(ROOT / "benchmarks" / "recipe_cv.py"),
                             run_name="not_main")["seed_averaged_comparison"]
    deployed, candidate = TrainConfig(model="deeper_cnn"), TrainConfig(model="deeper_cnn", epochs=30)
    base0 = cv_result(deployed, [0.08, 0.07, 0.09, 0.07, 0.06])
    cand0 = cv_result(candidate, [0.07, 0.07, 0.07, 0.06, 0.05])
    one = compare([cand0], [base0])
    library = compare_configs(candidate, deployed, cand0, base0)
    assert one["diff"] == pytest.approx(library["mean_diff"])
    assert one["p_value"] == pytest.approx(library["p_value"])
    assert one["cv"] == pytest.approx(cand0.summary["mean"])
    assert one["cv_low"] == pytest.approx(cand0.summary["ci_low"])

    # A second training seed on the same folds: each fold's loss is the mean of its two trainings, and a seed
    # that points the same way makes the fold differences steadier, so the test grows surer.
    base1 = cv_result(deployed.replace(seed=1), [0.06, 0.07, 0.05, 0.07, 0.06])
    cand1 = cv_result(candidate.replace(seed=1), [0.05, 0.06, 0.05, 0.05, 0.05])
    two = compare([cand0, cand1], [base0, base1])
    assert two["seeds"] == [0, 1] and two["per_fold_per_seed"]["1"] == cand1.losses
    assert two["per_fold"] == pytest.approx([0.06, 0.065, 0.06, 0.055, 0.05])
    assert two["deployed_per_fold"] == pytest.approx([0.07, 0.07, 0.07, 0.07, 0.06])
    assert two["diff"] == pytest.approx(-0.01) and two["p_value"] < one["p_value"]
    with pytest.raises(SystemExit, match="same folds"):
        compare([cand0], [cv_result(deployed, base0.losses, plan_key="another plan")])


def test_recipe_cv_holm_family_counts_the_stopped_candidates():
    # Issue 16's decision: 45 epochs at two-seed p 0.018 in a family of four, three of them stopped or
    # not re-run.
    holm = runpy.run_path(str(ROOT / "benchmarks" / "recipe_cv.py"), run_name="not_main")["holm_over_family"]
    assert holm([0.018], ["epochs30-wd0.1", "ema0.995", "mixup_cutmix"]) == pytest.approx([0.072])
    assert holm([0.018, 0.31], []) == pytest.approx([0.036, 0.31])


def test_seed_spread_is_per_fold_over_the_seeds():
    spread = runpy.run_path(str(ROOT / "benchmarks" / "seed_spread.py"), run_name="not_main")["spread"]
    result = spread({0: [0.10, 0.08, 0.12], 1: [0.12, 0.08, 0.10], 2: [0.11, 0.09, 0.11]})
    assert [f["losses"] for f in result["per_fold"]] == [[0.10, 0.12, 0.11], [0.08, 0.08, 0.09],
                                                         [0.12, 0.10, 0.11]]
    assert result["median_range"] == pytest.approx(0.02) and result["max_range"] == pytest.approx(0.02)
    assert result["per_fold"][1]["sd"] == pytest.approx(0.0057735, rel=1e-4)
    assert result["cv_mean_by_seed"][0] == pytest.approx(0.10)
