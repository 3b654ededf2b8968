"""train_model / evaluate_on_split / predict_paths and the train and predict CLIs, on the synthetic
set; predict on real originals and a short real training where ../shared/data exists."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from muffin_lib import cli
from muffin_lib.config import CLASSES
from muffin_lib.data import imageio
from muffin_lib.training import checkpoints, loop, predict, recipe, runtime, train
from muffin_lib.training.recipe import TrainConfig

CONFIG = TrainConfig(model="simple_cnn", image_size=32, epochs=1, batch_size=16)


@pytest.fixture(scope="module")
def trained(synthetic_data_dir, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("work")
    run = train.train_model(synthetic_data_dir, work_dir, CONFIG, device="cpu", progress=False)
    return synthetic_data_dir, work_dir, run


def test_train_model_saves_and_validates(trained):
    _, work_dir, run = trained
    assert run.checkpoint_path == work_dir.resolve() / "checkpoints" / "simple_cnn.pt"
    assert run.checkpoint_path.is_file() and not run.resumed and len(run.history) == 1
    n_val = run.val_scores["n"]
    assert n_val == len(run.val_predictions["relpaths"]) == len(run.val_predictions["probabilities"]) > 0
    assert run.val_predictions["class_names"] == list(CLASSES) and run.class_names == CLASSES
    assert run.val_scores["errors"] == sum(
        p != t for p, t in zip(run.val_predictions["predicted"], run.val_predictions["labels"], strict=True)
    )
    _, checkpoint = checkpoints.load_checkpoint(run.checkpoint_path, device="cpu")
    assert checkpoint["extra"]["n_val"] == n_val and checkpoint["extra"]["synthetic"] is True
    # calibrated on the validation predictions, stored with the checkpoint
    assert checkpoint["extra"]["temperature"] == run.temperature > 0


def test_train_model_resumes_only_the_same_config(trained, monkeypatch):
    data_dir, work_dir, run = trained
    calls = []
    real_fit = loop.fit
    monkeypatch.setattr(loop, "fit", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    again = train.train_model(data_dir, work_dir, CONFIG, device="cpu", progress=False)
    assert again.resumed and calls == [] and again.history == run.history
    assert again.val_scores == run.val_scores
    other = train.train_model(
        data_dir, work_dir, CONFIG.replace(seed=1), device="cpu", progress=False,
        checkpoint_path=work_dir / "other.pt",
    )
    assert not other.resumed and calls == [1]


def test_train_model_retrains_after_a_version_or_precision_change(synthetic_data_dir, tmp_path, monkeypatch):
    calls = []
    real_fit = loop.fit
    monkeypatch.setattr(loop, "fit", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    path = tmp_path / "versions.pt"

    def run(config=CONFIG):
        return train.train_model(
            synthetic_data_dir, tmp_path, config, device="cpu", progress=False, checkpoint_path=path
        )

    first = run()
    extra = torch.load(path, map_location="cpu", weights_only=True)["extra"]
    assert extra["code_version"] == recipe.CODE_VERSION
    assert extra["preprocess_version"] == imageio.PREPROCESS_VERSION
    assert extra["execution"] == "cpu/fp32"
    assert not first.resumed and calls == [1]
    assert run().resumed and calls == [1]  # everything matches: reused

    monkeypatch.setattr(recipe, "CODE_VERSION", recipe.CODE_VERSION + 1)
    assert not run().resumed and calls == [1, 1]  # a new code version trains again
    assert run().resumed and calls == [1, 1]
    monkeypatch.setattr(imageio, "PREPROCESS_VERSION", imageio.PREPROCESS_VERSION + 1)
    assert not run().resumed and calls == [1, 1, 1]  # so does a new preprocessing version
    assert run().resumed and calls == [1, 1, 1]

    # Same config key, checkpoint saved as another precision: not reused. (No bf16 training on the CPU here:
    # the saved extra says cpu/bf16, as a run with amp="bf16" would, while this run asks for cpu/fp32.)
    assert runtime.execution_key("bf16", "cpu") == "cpu/bf16" != runtime.execution_key(CONFIG.amp, "cpu")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint["extra"]["execution"] = "cpu/bf16"
    torch.save(checkpoint, path)
    assert not run().resumed and calls == [1, 1, 1, 1]
    assert torch.load(path, map_location="cpu", weights_only=True)["extra"]["execution"] == "cpu/fp32"
    assert run().resumed and calls == [1, 1, 1, 1]


def test_evaluate_on_split(trained):
    data_dir, work_dir, run = trained
    report = train.evaluate_on_split(run.checkpoint_path, data_dir, work_dir, "test", device="cpu",
                                     progress=False)
    assert report["n"] == 24 and len(report["predictions"]) == 24 and report["synthetic"]
    assert report["ci_low"] <= report["zero_one_loss"] <= report["ci_high"]
    assert sum(map(sum, report["confusion"])) == 24
    assert report["errors"] == sum(not p["correct"] for p in report["predictions"])
    assert set(CLASSES) <= set(report["per_class"])
    json.dumps(report)  # notebooks save it as JSON


def test_train_cli_prints_history(synthetic_data_dir, tmp_path, capsys):
    out = tmp_path / "cli.pt"
    argv = ["train", "--model", "simple_cnn", "--data-dir", str(synthetic_data_dir), "--work-dir",
            str(tmp_path), "--image-size", "32", "--epochs", "2", "--batch-size", "16", "--device", "cpu",
            "--quiet", "--out", str(out)]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["epoch", "train_loss", "train_accuracy"]
    assert lines[1].split()[0] == "1" and lines[2].split()[0] == "2"
    assert "validation zero-one loss" in lines[-1] and out.is_file()
    assert cli.main(argv + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["resumed"] and result["checkpoint"] == str(out) and len(result["history"]) == 2


def test_train_cli_bad_pretrained_value(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--pretrained", "maybe"])
    assert "expected true or false" in capsys.readouterr().err


def test_label_from_path():
    assert predict.label_from_path(Path("x/test/Muffin/a.jpg")) == CLASSES.index("muffin")
    assert predict.label_from_path(Path("CHIHUAHUA/a.jpg")) == CLASSES.index("chihuahua")
    assert predict.label_from_path(Path("muffin/photos/a.jpg")) is None


def test_predict_paths_reports_unreadable_files(trained, tmp_path):
    data_dir, _, run = trained
    folder = tmp_path / "mixed"
    shutil.copytree(data_dir / "test", folder)
    (folder / "muffin" / "broken.jpg").write_text("this is not a jpeg")
    (folder / "notes.txt").write_text("ignored: not an image extension")
    unlabelled = tmp_path / "photo.jpg"
    shutil.copy(next((data_dir / "test" / "muffin").iterdir()), unlabelled)
    paths = [folder, unlabelled, tmp_path / "missing.png"]
    result = predict.predict_paths(run.checkpoint_path, paths, device="cpu")
    assert result["n"] == 27 and result["n_failed"] == 2 and result["n_labelled"] == 24
    by_name = {Path(p["path"]).name: p for p in result["predictions"]}
    assert "not an image" in by_name["broken.jpg"]["error"]
    assert by_name["missing.png"]["error"] == "no such file or folder"
    photo = by_name["photo.jpg"]
    assert photo["true_label"] is None and photo["label"] in CLASSES and 0.5 <= photo["probability"] <= 1
    assert result["zero_one_loss"] == result["errors"] / 24


def test_predict_cli_json(trained, capsys):
    data_dir, _, run = trained
    assert cli.main(["predict", str(run.checkpoint_path), str(data_dir / "test"), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # 24 files, the count, the zero-one loss, the twin-free part (the synthetic test split has twins in
    # train) and the look at the test split, recorded though no --work-dir was given
    assert len(lines) == 24 + 4 and lines[-3].startswith("zero-one loss ")
    assert lines[-2].startswith("twin-free part (21 test images with no near-duplicate in train; 3 left out)")
    assert lines[-1].startswith("test split look recorded in ")
    assert cli.main(["predict", str(run.checkpoint_path), str(data_dir / "test"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(result["predictions"]) == 24 and 0 <= result["zero_one_loss"] <= 1
    free = result["twin_free"]
    assert free["n"] == 21 and free["n_with_train_twin"] == 3
    wrong_and_free = sum(
        not p["correct"] for p in result["predictions"]
        if not p["path"].endswith(("00003.jpg", "00013.jpg", "00023.jpg"))
    )
    assert free["errors"] == wrong_and_free


def test_predict_outside_a_dataset_has_no_twin_free_part(trained, tmp_path):
    data_dir, _, run = trained
    folder = tmp_path / "mine" / "muffin"
    folder.mkdir(parents=True)
    shutil.copy(data_dir / "test" / "muffin" / "synthetic_00001.jpg", folder / "photo.jpg")
    result = predict.predict_paths(run.checkpoint_path, [folder], device="cpu")
    assert result["n_labelled"] == 1 and result["twin_free"] is None


def test_predict_cli_missing_checkpoint(tmp_path, capsys):
    assert cli.main(["predict", str(tmp_path / "none.pt"), str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.realdata
def test_predict_cli_on_real_originals(trained, shared_data, capsys, tmp_path):
    # Originals of any size (up to ~4600 px) and mode, greyscale included; each gets its Grad-CAM overlay.
    from PIL import Image

    _, _, run = trained
    originals = shared_data / "originals-sample"
    n_files = sum(1 for p in originals.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    out = tmp_path / "explained"
    args = ["predict", str(run.checkpoint_path), str(originals), "--json", "--device", "cpu", "--explain",
            str(out)]
    assert cli.main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(result["predictions"]) == n_files and result["n_failed"] == 0
    assert result["n_labelled"] == n_files and 0 <= result["zero_one_loss"] <= 1
    written = sorted(out.glob("*_gradcam.png"))
    assert len(written) == n_files == len({e["explanation"] for e in result["predictions"]})
    assert Image.open(written[0]).size == (2 * CONFIG.image_size, CONFIG.image_size)


def test_predict_reports_calibrated_probabilities(trained, tmp_path):
    from muffin_lib.training import calibration

    data_dir, _, run = trained
    files = sorted((data_dir / "test").rglob("*.png"))[:6] or sorted((data_dir / "test").rglob("*.jpg"))[:6]
    result = predict.predict_paths(run.checkpoint_path, files, device="cpu", explain_dir=tmp_path / "x")
    assert result["temperature"] == run.temperature
    images = torch.stack([imageio.preprocess_image(f, CONFIG.image_size, CONFIG.color_mode) for f in files])
    raw = loop.predict_proba(run.model, images, run.normalization, device="cpu")
    expected = calibration.apply_temperature(raw, run.temperature)
    got = np.array([[e["probabilities"][c] for c in CLASSES] for e in result["predictions"]])
    assert got == pytest.approx(expected, abs=1e-5)
    assert all(Path(e["explanation"]).is_file() for e in result["predictions"])


@pytest.mark.slow
@pytest.mark.realdata
def test_short_real_training_beats_chance(shared_data):
    from muffin_lib.data.imageio import preprocess_image

    def sample(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        files = sorted((shared_data / "muffin-chihuahua-dev" / split).glob("*/*.jpg"))
        files = random.Random(0).sample(files, n)
        images = torch.stack([preprocess_image(f, 64, "grayscale") for f in files])
        return images, torch.tensor([CLASSES.index(f.parent.name.lower()) for f in files])

    train_images, train_labels = sample("train", 300)
    test_images, test_labels = sample("test", 200)
    # Measured: about 0.20 test error (majority-class error about 0.46); simple_cnn gets about 0.30.
    config = TrainConfig(model="resnet_like", image_size=64, color_mode="grayscale", epochs=5, lr=3e-3,
                         batch_size=32, augment="flip_rotate", label_smoothing=0.0)
    result = loop.fit(config, (train_images, train_labels), device="cpu", progress=False)
    scores = loop.evaluate(result.model, test_images, test_labels, result.normalization, device="cpu")
    majority = max(test_labels.float().mean().item(), 1 - test_labels.float().mean().item())
    assert scores["zero_one_loss"] < (1 - majority) - 0.1, scores


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning: ")]


def test_predict_cli_exits_1_when_it_classified_nothing(trained, tmp_path, capsys):
    data_dir, _, run = trained
    broken = tmp_path / "broken.jpg"
    broken.write_text("this is not a jpeg")
    assert cli.main(["predict", str(run.checkpoint_path), str(broken), "--device", "cpu"]) == 1
    assert "0 of 1 file classified, 1 unreadable" in capsys.readouterr().out.splitlines()
    argv = ["predict", str(run.checkpoint_path), str(broken), str(tmp_path / "missing.png"), "--json"]
    assert cli.main(argv) == 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_failed"] == 2
    good = data_dir / "test" / "muffin" / "synthetic_00001.jpg"
    assert cli.main(["predict", str(run.checkpoint_path), str(good), str(broken), "--device", "cpu"]) == 0
    assert "1 of 2 files classified, 1 unreadable" in capsys.readouterr().out.splitlines()


def test_predict_cli_warns_about_images_smaller_than_the_model_input(trained, tmp_path, capsys):
    from PIL import Image

    data_dir, _, run = trained
    Image.new("RGB", (1, 1), (200, 150, 90)).save(tmp_path / "photo.png")
    Image.new("L", (60, 20)).save(tmp_path / "strip.png")  # only its shorter side counts
    shutil.copy(data_dir / "test" / "muffin" / "synthetic_00001.jpg", tmp_path / "big.jpg")  # 48 px > 32 px
    assert cli.main(["predict", str(run.checkpoint_path), str(tmp_path), "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    small = [w for w in _warnings(err) if "upscaled" in w]
    assert small == [
        f"warning: {tmp_path / 'photo.png'} is 1x1 px: upscaled to 32 px, so its prediction means little",
        f"warning: {tmp_path / 'strip.png'} is 60x20 px: upscaled to 32 px, so its prediction means little",
    ]
    assert "3 of 3 files classified" in out.splitlines()
    result = predict.predict_paths(run.checkpoint_path, tmp_path / "big.jpg", device="cpu")
    assert result["predictions"][0]["warning"] is None


def test_predict_cli_warns_once_about_a_synthetic_off_recipe_checkpoint(trained, tmp_path, capsys):
    data_dir, _, run = trained
    assert cli.main(["predict", str(run.checkpoint_path), str(data_dir / "test"), "--device", "cpu"]) == 0
    assert _warnings(capsys.readouterr().err) == [  # 24 files, each warning once
        "warning: this checkpoint was trained on SYNTHETIC data: its predictions on real photos mean nothing",
        "warning: this checkpoint was trained off its recipe (32 px, 1 epoch where its recipe has 128 px, "
        "15 epochs): expect more errors than its recipe's",
    ]
    checkpoint = torch.load(run.checkpoint_path, map_location="cpu", weights_only=True)
    checkpoint["extra"]["synthetic"] = False  # as if trained on real photos
    real = tmp_path / "real.pt"
    torch.save(checkpoint, real)
    # another checkpoint on the same test split: a forced look
    assert cli.main(["predict", str(real), str(data_dir / "test" / "muffin"), "--device", "cpu", "--json",
                     "--allow-new-test-look"]) == 0
    out, err = capsys.readouterr()
    assert [w for w in _warnings(err) if "SYNTHETIC" in w] == [] and len(_warnings(err)) == 1
    warnings = [w.removeprefix("warning: ") for w in _warnings(err)]
    assert json.loads(out.strip().splitlines()[-1])["warnings"] == warnings


def test_recipe_shortfall():
    def stored(model, size, epochs):
        return {"model_name": model, "image_size": size, "config": {"image_size": size, "epochs": epochs}}

    assert predict.recipe_shortfall(stored("simple_cnn", 128, 15)) is None
    assert predict.recipe_shortfall(stored("deeper_cnn", 160, 20)) is None  # beyond the recipe is no warning
    assert predict.recipe_shortfall(stored("simple_cnn", 96, 15)).startswith("96 px, 15 epochs")
    # A transfer checkpoint is held to the recipe of its train_layers (none stored: fine-tuning).
    probe = {"model_name": "transfer", "image_size": 224, "config": {"image_size": 224, "epochs": 30,
                                                                     "train_layers": "head"}}
    assert predict.recipe_shortfall(probe) is None
    assert predict.recipe_shortfall(stored("transfer", 224, 3)) is None
    assert predict.recipe_shortfall(stored("transfer", 128, 6)) == (
        "128 px, 6 epochs where its recipe has 224 px, 3 epochs"
    )
    assert predict.checkpoint_warnings({**stored("simple_cnn", 128, 15), "extra": {"synthetic": False}}) == []
