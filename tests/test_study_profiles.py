"""Profiles that say what they estimate (issue 15): full selects at the deployed recipe, quick at the laptop
budget and says so, auto chooses by data and hardware."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from muffin_lib.selection.budget import FULL, QUICK, SELECTION, budget_for, settings_label
from muffin_lib.study import notebook, runner
from muffin_lib.study.report import selection as report_selection
from muffin_lib.study.summary import format_summary
from muffin_lib.training.recipe import TRANSFER_RECIPE, TrainConfig


def test_the_full_budget_is_the_recipe_notebooks_03_05_train():
    recipe = TrainConfig()
    assert SELECTION is FULL and FULL.deployed
    assert (FULL.image_size, FULL.epochs) == (recipe.image_size, recipe.epochs)
    assert FULL.rung_epochs[-1] < FULL.epochs and FULL.inner_splits == FULL.n_splits  # nested CV: 06's K
    assert not QUICK.deployed and (QUICK.image_size, QUICK.epochs) == (64, 8)
    assert "deployed recipe" in FULL.label and "cheaper than the deployed 128 px / 15 epochs" in QUICK.label
    assert budget_for(64, 8) is QUICK and budget_for(96, 8) is None
    assert settings_label(32, 1) == "32 px, 1 epoch (not the deployed 128 px / 15 epochs)"


def _selection_defaults(name: str) -> dict:
    import ast

    import papermill

    path = Path(__file__).resolve().parents[1] / "notebooks" / f"{name}.ipynb"
    return {k: ast.literal_eval(v["default"]) for k, v in papermill.inspect_notebook(str(path)).items()}


@pytest.mark.parametrize("name", ["06_grid_search", "07_cv_risk"])
def test_full_profile_trains_06_and_07_with_exactly_the_config_of_03_05(name):
    # The CV of 07 and the last rung of 06 must be the TrainConfig that notebooks 03-05 train.
    params = notebook.apply_profile("full", name, _selection_defaults(name))
    models = params["models"] if "models" in params else [params["model"]]
    for model in (m for m in models if m != "transfer"):  # transfer: at its own recipe (the test below)
        assert notebook.train_config(params, model) == TrainConfig(model=model)


@pytest.mark.parametrize("profile", ["full", "quick", "smoke"])
def test_07_cross_validates_the_transfer_model_that_08_trains_in_each_profile(profile):
    # "CV at the deployed recipe" for the pretrained network too: 07's transfer row is 08's configuration.
    cv = notebook.apply_profile(profile, "07_cv_risk", _selection_defaults("07_cv_risk"))
    name = "08_transfer_learning"
    deployed = notebook.apply_profile(profile, name, _selection_defaults(name))
    assert "transfer" in cv["models"]
    assert notebook.transfer_config(cv) == notebook.train_config(deployed, "transfer")
    if profile != "smoke":  # the smoke profile caps its size and epochs
        assert notebook.transfer_config(cv) == TRANSFER_RECIPE


@pytest.mark.parametrize("name", ["06_grid_search", "07_cv_risk"])
def test_quick_profile_changes_only_the_selection_budget_and_marks_it(name):
    defaults = _selection_defaults(name)
    params = notebook.apply_profile("quick", name, defaults)
    assert (params["image_size"], params["epochs"]) == (QUICK.image_size, QUICK.epochs)
    if "inner_splits" in params:
        assert params["inner_splits"] == QUICK.inner_splits
    if "rung_epochs" in params:
        assert params["rung_epochs"] == list(QUICK.rung_epochs)
    assert "was `128`" in params._repr_markdown_()  # the parameters table shows what the profile changed
    # A value the user set survives; other notebooks are untouched.
    assert notebook.apply_profile("quick", name, {**defaults, "image_size": 96})["image_size"] == 96
    other = notebook.apply_profile("quick", "04_deeper_cnn", {"image_size": 128, "epochs": 15})
    assert other["image_size"] == 128


@pytest.mark.parametrize("name", ["06_grid_search", "07_cv_risk"])
def test_the_selection_notebooks_train_trials_at_once_except_in_the_smoke_profile(name):
    defaults = _selection_defaults(name)
    assert defaults["workers"] == "auto"
    assert notebook.apply_profile("full", name, defaults)["workers"] == "auto"
    assert notebook.apply_profile("quick", name, defaults)["workers"] == "auto"
    smoke = notebook.apply_profile("smoke", name, defaults)
    assert smoke["workers"] == 1 and "was `'auto'`" in smoke._repr_markdown_()  # seconds-long trials: no pool
    assert notebook.apply_profile("smoke", name, {**defaults, "workers": 3})["workers"] == 1
    assert notebook.apply_profile("smoke", name, {**defaults, "workers": 1})["workers"] == 1


def test_auto_profile_chooses_by_data_and_hardware(synthetic_data_dir, tmp_path, monkeypatch):
    import torch

    assert runner.auto_profile(synthetic_data_dir)[0] == "smoke"
    real = tmp_path / "photos"
    (real / "train").mkdir(parents=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    profile, why = runner.auto_profile(real)
    assert profile == "quick" and "--profile full" in why
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert runner.auto_profile(real) == ("full", "a CUDA GPU is available (Tesla T4)")


def _write_results(work_dir, name: str, content: dict) -> None:
    path = work_dir / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def test_best_by_cv_counts_only_risks_at_the_candidates_recipe(tmp_path):
    names = ["simple_cnn", "deeper_cnn"]
    for number, (name, val) in enumerate([("simple_cnn", 0.08), ("deeper_cnn", 0.06)], start=3):
        _write_results(tmp_path, f"0{number}_{name}", {"models": {name: {"val_zero_one_loss": val}}})
    # Quick profile: CV at 64 px says simple_cnn, but those are not the 128 px candidates' risks.
    quick = {"simple_cnn": {"cv_risk": 0.10, "cv_deployed": False},
             "deeper_cnn": {"cv_risk": 0.12, "cv_deployed": False}}
    _write_results(tmp_path, "07_cv_risk", {"models": quick})
    assert report_selection.best_by_cv(tmp_path, names) == "deeper_cnn"  # by validation error instead
    full = {"simple_cnn": {"cv_risk": 0.10, "cv_deployed": True},
            "deeper_cnn": {"cv_risk": 0.12, "cv_deployed": True}}
    _write_results(tmp_path, "07_cv_risk", {"models": full})
    assert report_selection.best_by_cv(tmp_path, names) == "simple_cnn"


def test_summary_names_the_settings_of_each_cv_number_and_of_models_trained_off_their_recipe():
    from muffin_lib.study.report.models import off_recipe

    assert off_recipe(TrainConfig(model="deeper_cnn")) is None and off_recipe(TRANSFER_RECIPE) is None
    assert off_recipe(TRANSFER_RECIPE.replace(epochs=1)) == "224 px, 1 epoch (not its recipe's 224 px / 30)"
    short = off_recipe(TrainConfig(model="deeper_cnn", epochs=5))  # e.g. `run -p epochs 5`
    assert short == "128 px, 5 epochs (not the deployed 128 px / 15 epochs)"
    summary = {
        "synthetic": False, "data_dir": "D", "work_dir": "W", "profile": "quick", "notebooks": {},
        "findings": [],
        "models": {"deeper_cnn": {"cv_risk": 0.1, "cv_ci": [0.08, 0.12], "cv_settings": QUICK.label,
                                  "val_zero_one_loss": 0.07, "off_recipe": short},
                   "transfer": {"val_zero_one_loss": 0.1, "off_recipe": None}},
    }
    text = format_summary(summary)
    assert "0.100 [0.080, 0.120] at 64 px, 8 epochs (profile quick: cheaper than the deployed" in text
    assert "| deeper_cnn at 128 px, 5 epochs (not the deployed 128 px / 15 epochs) |" in text
    assert "| transfer |" in text


def test_07_names_its_transfer_row_as_08_does_with_its_own_settings_and_the_imagenet_caveat():
    from muffin_lib.study import report

    class Result:
        def __init__(self, mean, config):
            self.summary = {"mean": mean, "ci_low": mean - 0.01, "ci_high": mean + 0.01, "naive_ci_low": 0,
                            "naive_ci_high": 1, "interval": "corrected t (Nadeau-Bengio), 95%"}
            self.losses, self.config = [mean] * 5, config

    cv = {"deeper_cnn": Result(0.10, TrainConfig(model="deeper_cnn", image_size=64, epochs=8)),
          "transfer": Result(0.02, TRANSFER_RECIPE)}
    text = report.cv_finding(cv, 5)
    probe = "risk at 224 px, a linear probe on the frozen network (ImageNet weights; 30 epochs of its head) ("
    assert probe in text
    assert "transfer 0.020" in text
    assert "at 64 px, 8 epochs (profile quick" in text and "not a fair contest of architectures" in text

    class Nested:
        summary = cv["deeper_cnn"].summary
        inner = [type("Inner", (), {"best": TrainConfig(model="deeper_cnn")})]

        @staticmethod
        def to_dict():
            return {}

    grid = {"best_config": TrainConfig(model="deeper_cnn").to_dict(), "grid": {"lr": [0.003]}}
    models = report.cv_results(cv, [], Nested, grid, [text], synthetic=False)["models"]
    row = models[report.transfer_name(True)]  # the name 08 and 09 give it: one summary row
    assert row["cv_deployed"] and row["cv_settings"].startswith("224 px, a linear probe")
    assert not models["deeper_cnn"]["cv_deployed"]  # 64 px: not the deployed CNN recipe
