"""The ``cv`` command honours --epochs: one value, or a grid over epochs (issue 15)."""

from __future__ import annotations

import json

import pytest

from muffin_lib.cli import main as cli_main
from muffin_lib.errors import MuffinError
from muffin_lib.selection import RunOptions, grid_search
from muffin_lib.selection.trial_store import TrialStore
from muffin_lib.training.recipe import TrainConfig


def _cv(data_dir, work_dir, *extra) -> list[str]:
    return ["cv", "--data-dir", str(data_dir), "--work-dir", str(work_dir), "--model", "simple_cnn",
            "--image-size", "32", "--color-mode", "grayscale", "--batch-size", "16", "--folds", "2",
            "--device", "cpu", "--quiet", "--json", *extra]  # fmt: skip


def _outcome(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cv_trains_the_epochs_it_is_given(synthetic_data_dir, tmp_path, capsys):
    assert cli_main(_cv(synthetic_data_dir, tmp_path, "--epochs", "1")) == 0
    outcome = _outcome(capsys)
    assert [row["epochs"] for row in outcome["table"]] == [1]
    records = TrialStore(tmp_path / "trials.sqlite").records()
    assert len(records) == 2 and all(record["config"]["epochs"] == 1 for record in records)


def test_cv_grid_over_epochs(synthetic_data_dir, tmp_path, capsys):
    assert cli_main(_cv(synthetic_data_dir, tmp_path, "--epochs", "1,2")) == 0
    outcome = _outcome(capsys)
    assert sorted(row["epochs"] for row in outcome["table"]) == [1, 2]
    records = TrialStore(tmp_path / "trials.sqlite").records()
    epochs = sorted({record["config"]["epochs"] for record in records})
    assert epochs == [1, 2]


def test_a_grid_over_epochs_cannot_also_halve(synthetic_data_dir, tmp_path):
    from muffin_lib.data.cache import load_images

    cache = load_images(synthetic_data_dir, tmp_path, "train", 32, "grayscale", progress=False)
    folds = [(list(range(0, 64, 2)), list(range(1, 64, 2)))]
    base = TrainConfig(image_size=32, color_mode="grayscale", epochs=2, batch_size=16)
    with pytest.raises(MuffinError, match="successive halving"):
        grid_search(base, {"epochs": [1, 2]}, cache, folds, rung_epochs=[1], options=RunOptions(device="cpu"))


def test_cv_of_the_transfer_model_is_pretrained_at_its_own_recipe(synthetic_data_dir, tmp_path, capsys):
    from muffin_lib.training.recipe import TRANSFER_RECIPE

    args = ["cv", "--data-dir", str(synthetic_data_dir), "--work-dir", str(tmp_path), "--model", "transfer",
            "--image-size", "32", "--folds", "2", "--device", "cpu", "--quiet", "--json"]
    assert cli_main([*args, "--epochs", "1"]) == 0
    records = TrialStore(tmp_path / "trials.sqlite").records()
    want = TRANSFER_RECIPE.replace(image_size=32, epochs=1)
    assert len(records) == 2 and all(TrainConfig(**r["config"]).key() == want.key() for r in records)
    # Mixed with a CNN it would silently take the CNNs' recipe: refused before any work.
    capsys.readouterr()
    assert cli_main([*args[:6], "simple_cnn,transfer", *args[7:]]) != 0
    assert "cross-validate it alone: --model transfer" in capsys.readouterr().err


def test_cv_of_the_transfer_model_defaults_to_its_recipes_epochs():
    from muffin_lib.cli import build_parser
    from muffin_lib.selection.cli import _search_space
    from muffin_lib.training.recipe import TRANSFER_RECIPE

    base, grid, _ = _search_space(build_parser("cv").parse_args(["cv", "--model", "transfer"]))
    assert grid["epochs"] == [TRANSFER_RECIPE.epochs] and grid["image_size"] == [TRANSFER_RECIPE.image_size]
    assert base.replace(epochs=TRANSFER_RECIPE.epochs) == TRANSFER_RECIPE
