"""Training, checkpoints, predict, explain and reports on datasets whose classes are not muffin and
chihuahua."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from muffin_lib import cli
from muffin_lib.config import CLASSES
from muffin_lib.data.synthetic import make_synthetic_dataset
from muffin_lib.study import plots, report
from muffin_lib.training import checkpoints, explain, loop, predict, train
from muffin_lib.training.recipe import TrainConfig

CONFIG = TrainConfig(model="simple_cnn", image_size=32, epochs=1, batch_size=16)
THREE = ("bagel", "cat", "donut")


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    root = tmp_path_factory.mktemp("three")
    data = make_synthetic_dataset(root / "data", n_train=60, n_test=15, image_size=32, classes=THREE)
    run = train.train_model(data, root / "work", CONFIG, device="cpu", progress=False)
    return data, root / "work", run


def test_a_three_class_model_is_trained_saved_and_reported_with_its_names(three):
    data, work, run = three
    assert run.class_names == THREE and run.model.muffin_spec["num_classes"] == 3
    _, stored = checkpoints.load_checkpoint(run.checkpoint_path, device="cpu")
    assert stored["class_names"] == list(THREE) and stored["num_classes"] == 3
    shown = run.val_predictions
    assert shown["class_names"] == list(THREE)
    assert np.asarray(shown["probabilities"]).shape == (run.val_scores["n"], 3)
    assert np.allclose(np.asarray(shown["probabilities"]).max(axis=1), shown["confidence"])

    summary = report.validation_summary(shown)
    assert np.asarray(summary["confusion"]).shape == (3, 3) and set(THREE) <= set(summary["per_class"])
    assert any(f"{name}s taken for" in report.validation_finding("simple_cnn", summary) for name in THREE)
    finding = report.confusion_finding(summary["confusion"], THREE)
    assert all(f"{name}s taken for others" in finding for name in THREE)
    assert list(report.confusion_table(summary["confusion"], THREE).index) == [f"true {c}" for c in THREE]
    plots.confusion_matrix(summary["confusion"], class_names=THREE)
    examples = explain.validation_examples(run, data, work, n=2)
    assert examples and all(e["caption"].split()[0] in THREE for e in examples)

    scored = train.evaluate_on_split(run.checkpoint_path, data, work, "train", device="cpu", progress=False)
    assert scored["class_names"] == list(THREE) and np.asarray(scored["confusion"]).shape == (3, 3)
    assert set(scored["predictions"][0]["probabilities"]) == set(THREE)


def test_predict_names_the_three_classes(three, capsys):
    data, work, run = three
    result = predict.predict_paths(run.checkpoint_path, data / "test", device="cpu", work_dir=work)
    assert result["class_names"] == list(THREE) and result["n_labelled"] == result["n"] == 15
    for entry in result["predictions"]:
        assert set(entry["probabilities"]) == set(THREE) and entry["label"] in THREE
        assert entry["true_label"] == Path(entry["path"]).parent.name
        assert sum(entry["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert predict.label_from_path(Path("x/test/Donut/a.jpg"), THREE) == 2
    assert predict.label_from_path(Path("x/test/muffin/a.jpg"), THREE) is None

    assert cli.main(["predict", str(run.checkpoint_path), str(data / "test" / "cat"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "classes: bagel, cat, donut" in out and "zero-one loss" in out
    argv = ["predict", str(run.checkpoint_path), str(data / "test" / "cat"), "--device", "cpu", "--json"]
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["class_names"] == list(THREE)


def test_an_old_checkpoint_without_names_predicts_muffin_and_chihuahua(three, tmp_path):
    data, _, run = three
    old = torch.load(run.checkpoint_path, map_location="cpu", weights_only=True)
    old["num_classes"] = 2
    head = [k for k in old["state_dict"] if k.endswith(".weight")][-1]  # the last Linear: keep two outputs
    for key in (head, head.removesuffix("weight") + "bias"):
        old["state_dict"][key] = old["state_dict"][key][:2]
    del old["class_names"]
    torch.save(old, tmp_path / "old.pt")
    result = predict.predict_paths(tmp_path / "old.pt", data / "test" / "cat", device="cpu")
    assert result["class_names"] == list(CLASSES) and result["n_labelled"] == 0
    assert {e["label"] for e in result["predictions"]} <= set(CLASSES)


def _linked_subset(source: Path, target: Path, rename: dict[str, str], per_class: dict[str, int]) -> Path:
    """Hard links (copies across devices) of dev-train photos into ``target``'s splits: per class folder, the
    first ``per_class["train"]`` files go to train/, the next ``per_class["test"]`` to test/. Only the dev
    data's train split is read: its test split is scored by notebook 09 alone."""
    for folder in sorted((source / "train").iterdir()):
        files = iter(sorted(folder.iterdir()))
        for split, n in per_class.items():
            out = target / split / rename.get(folder.name, folder.name)
            out.mkdir(parents=True)
            for file in itertools.islice(files, n):
                try:
                    os.link(file, out / file.name)
                except OSError:
                    (out / file.name).write_bytes(file.read_bytes())
    return target


def test_renamed_class_folders_give_the_same_numbers(shared_data, tmp_path):
    dev = shared_data / "muffin-chihuahua-dev"
    per_class = {"train": 60, "test": 20}
    original = _linked_subset(dev, tmp_path / "original", {}, per_class)
    # the same alphabetical order, so label i is the same class in both
    renamed = _linked_subset(dev, tmp_path / "renamed", {"chihuahua": "canine", "muffin": "pastry"},
                             per_class)
    config = TrainConfig(model="simple_cnn", image_size=32, epochs=2, batch_size=16, amp="off")
    runs = {name: train.train_model(root, tmp_path / f"work-{name}", config, device="cpu", progress=False)
            for name, root in (("original", original), ("renamed", renamed))}
    assert runs["original"].class_names == CLASSES and runs["renamed"].class_names == ("canine", "pastry")
    a, b = runs["original"].val_predictions, runs["renamed"].val_predictions
    assert a["labels"] == b["labels"] and a["predicted"] == b["predicted"]
    assert np.allclose(a["probabilities"], b["probabilities"], atol=1e-6)
    assert runs["original"].val_scores["zero_one_loss"] == runs["renamed"].val_scores["zero_one_loss"]
    tests = {name: predict.predict_paths(runs[name].checkpoint_path, root / "test", device="cpu")
             for name, root in (("original", original), ("renamed", renamed))}
    assert tests["renamed"]["class_names"] == ["canine", "pastry"]
    assert tests["original"]["zero_one_loss"] == tests["renamed"]["zero_one_loss"]
    to_new = {"chihuahua": "canine", "muffin": "pastry"}
    original = [to_new[e["label"]] for e in tests["original"]["predictions"]]
    assert original == [e["label"] for e in tests["renamed"]["predictions"]]


@pytest.mark.slow
def test_the_smoke_series_runs_on_a_three_class_dataset(tmp_path):
    """Every notebook, 00 to 09, in the smoke profile on a 3-class synthetic set (minutes)."""
    import subprocess
    import sys

    data = make_synthetic_dataset(tmp_path / "data", classes=THREE)
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "muffin_lib", "run", "--profile", "smoke", "--data-dir", str(data),
         "--work-dir", str(tmp_path / "work")],
        cwd=repo, capture_output=True, text=True, timeout=3000,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert summary["synthetic"] is True
    results = json.loads((tmp_path / "work" / "results" / "03_simple_cnn.json").read_text())
    assert results["validation"]["class_names"] == list(THREE)


def test_selection_trials_build_one_output_per_class_of_the_cache_not_of_the_labels_seen(monkeypatch):
    # A cache of three classes whose training images so far show only two labels: every trial's model must
    # still have three outputs (the cache's classes), as its checkpointed siblings in 03-05 have.
    from muffin_lib.data.cache import ImageCache
    from muffin_lib.selection import RunOptions, cross_validate, stratified_folds

    labels = torch.tensor([0, 1] * 12)
    cache = ImageCache(images=torch.randint(0, 255, (24, 3, 32, 32), dtype=torch.uint8), labels=labels,
                       relpaths=[f"{i}.jpg" for i in range(24)], data_dir=Path("."), split="train",
                       image_size=32, color_mode="rgb", key="k", fingerprint="f", synthetic=True,
                       class_names=THREE)
    built = []
    fit = loop.fit
    monkeypatch.setattr(loop, "fit", lambda *a, **k: built.append(k["num_classes"]) or fit(*a, **k))
    folds = stratified_folds(labels.numpy(), 2, 0)
    cross_validate(CONFIG.replace(color_mode="rgb"), cache, folds,
                   options=RunOptions(device="cpu", progress=False))
    assert built == [3, 3]
