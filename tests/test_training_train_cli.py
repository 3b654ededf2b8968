"""The train CLI as a user meets it: every TrainConfig field a flag, bad values and outputs refused before
any training, and trained weights never lost when the checkpoint cannot be written."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from muffin_lib import cli
from muffin_lib.errors import MuffinError
from muffin_lib.training import checkpoints, loop, recipe, train
from muffin_lib.training.recipe import TrainConfig

SMALL = ["--model", "simple_cnn", "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--device",
         "cpu", "--quiet"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    train.add_train_arguments(parser)
    return parser


def test_every_trainconfig_field_is_a_flag_with_the_recipes_default_in_its_help():
    parser = _parser()
    assert train.config_from_args(parser.parse_args([])) == TrainConfig()
    helps = {action.dest: action.help for action in parser._actions}
    for item in dataclasses.fields(TrainConfig):
        assert item.name in helps and "default" in helps[item.name], item.name
    old_forms = parser.parse_args(["--compile", "--early-stopping", "3", "--pretrained", "false"])
    assert old_forms.compile is True and old_forms.early_stopping_patience == 3
    assert old_forms.pretrained is False


def test_a_new_trainconfig_field_becomes_a_train_flag_with_no_other_edit(monkeypatch):
    extended = dataclasses.make_dataclass("Extended", [("dropout", float, 0.5)], bases=(TrainConfig,),
                                          frozen=True)
    monkeypatch.setattr(recipe, "TrainConfig", extended)
    args = _parser().parse_args(["--dropout", "0.2", "--epochs", "3"])
    config = train.config_from_args(args)
    assert (config.dropout, config.epochs) == (0.2, 3)


@pytest.mark.parametrize(("argv", "message"), [
    (["--epochs", "0"], "--epochs: expected a whole number >= 1, got 0"),
    (["--image-size", "16"], "--image-size: expected a whole number >= 32, got 16"),
    (["--lr", "-1"], "--lr: expected a number > 0, got -1.0"),
])
def test_a_bad_value_is_named_by_its_flag(argv, message, capsys):
    assert cli.main(["train", *argv]) == 2
    assert message in capsys.readouterr().err


def test_an_out_that_is_a_directory_is_refused_before_training(synthetic_data_dir, tmp_path, monkeypatch,
                                                                capsys):
    monkeypatch.setattr(loop, "fit", lambda *a, **k: pytest.fail("trained although --out cannot be written"))
    out = tmp_path / "existing"
    out.mkdir()
    code = cli.main(["train", *SMALL, "--data-dir", str(synthetic_data_dir), "--work-dir",
                     str(tmp_path / "w"), "--out", str(out)])
    assert code == 2 and f"--out {out} is a directory" in capsys.readouterr().err


def test_a_checkpoint_that_cannot_be_written_after_training_is_saved_in_work_dir(synthetic_data_dir, tmp_path,
                                                                                 monkeypatch):
    real_save = checkpoints.save_checkpoint

    def fails_once(path, *args, **kwargs):
        if "rescued" not in str(path):
            raise OSError(28, "No space left on device")
        return real_save(path, *args, **kwargs)
    monkeypatch.setattr(checkpoints, "save_checkpoint", fails_once)
    config = TrainConfig(model="simple_cnn", image_size=32, epochs=1, batch_size=16)
    with pytest.raises(MuffinError, match="the trained model is saved as") as caught:
        train.train_model(synthetic_data_dir, tmp_path / "w", config, device="cpu", progress=False)
    rescued = str(caught.value).rsplit("saved as ", 1)[1]
    model, _ = checkpoints.load_checkpoint(rescued, device="cpu")
    assert model is not None


def test_train_model_transfer_starts_from_the_transfer_recipe():
    args = _parser().parse_args(["--model", "transfer", "--epochs", "2"])
    config = train.config_from_args(args)
    assert config == recipe.TRANSFER_RECIPE.replace(epochs=2) and config.pretrained


def test_train_layers_head_starts_from_the_linear_probe_recipe():
    args = _parser().parse_args(["--model", "transfer", "--train-layers", "head"])
    assert train.config_from_args(args) == recipe.LINEAR_PROBE
    # A probe cannot augment: the flag that asks for it is named.
    args = _parser().parse_args(["--model", "transfer", "--train-layers", "head", "--augment", "flip_rotate"])
    with pytest.raises(MuffinError, match="set augment 'none'"):
        train.config_from_args(args)


def test_a_flag_given_always_wins_over_the_models_recipe():
    # --epochs 15 is the CNNs' default, and must not be taken for "not given" by the transfer model.
    args = _parser().parse_args(["--model", "transfer", "--epochs", "15", "--train-layers", "all"])
    assert train.config_from_args(args) == recipe.FINE_TUNE.replace(epochs=15)
