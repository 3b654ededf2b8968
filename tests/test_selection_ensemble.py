"""Notebook 09's ensemble candidate: the mean of the calibrated probabilities of the three from-scratch
networks, scored with the others in the same look (selection.evaluation.ENSEMBLE), and identified by its
members' sha256 in the look record (muffin_lib.test_looks)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from muffin_lib import test_looks
from muffin_lib.data.cache import load_images
from muffin_lib.errors import MuffinError
from muffin_lib.selection import evaluation
from muffin_lib.study import report
from muffin_lib.training import checkpoints, loop, train
from muffin_lib.training.calibration import apply_temperature
from muffin_lib.training.metrics import zero_one_loss
from muffin_lib.training.recipe import TrainConfig

BASE = TrainConfig(model="simple_cnn", image_size=32, color_mode="grayscale", epochs=1, batch_size=16)
SIZES = {"simple_cnn": 32, "deeper_cnn": 32, "resnet_like": 40}  # members may differ in image size


@pytest.fixture(scope="module")
def members(synthetic_data_dir, tmp_path_factory):
    """The three from-scratch checkpoints, tiny, trained once; each test copies the work dir."""
    work_dir = tmp_path_factory.mktemp("ensemble-train")
    paths = {name: train.train_model(synthetic_data_dir, work_dir, BASE.replace(model=name, image_size=size),
                                     device="cpu", progress=False).checkpoint_path
             for name, size in SIZES.items()}
    other = train.train_model(synthetic_data_dir, work_dir, BASE.replace(model="deeper_cnn", seed=1),
                              device="cpu", progress=False,
                              checkpoint_path=work_dir / "deeper_other.pt").checkpoint_path
    return synthetic_data_dir, work_dir, paths, other


def _work(members, tmp_path):
    data_dir, train_work, paths, other = members
    work_dir = tmp_path / "work"
    shutil.copytree(train_work, work_dir)
    paths = {name: work_dir / "checkpoints" / f"{name}.pt" for name in paths}
    return data_dir, work_dir, paths, work_dir / other.name


def _evaluate(data_dir, work_dir, candidates, **kwargs):
    return evaluation.evaluate_candidates(candidates, data_dir, work_dir, device="cpu", progress=False,
                                          **kwargs)


def test_ensemble_is_the_mean_of_the_members_calibrated_probabilities(members, tmp_path):
    data_dir, work_dir, paths, _ = _work(members, tmp_path)
    assert evaluation.ENSEMBLE == "ensemble(simple_cnn+deeper_cnn+resnet_like)"
    final = _evaluate(data_dir, work_dir, paths)
    name = evaluation.ENSEMBLE
    assert set(final.scores) == {*paths, name} and name in final.table.index

    calibrated, labels, relpaths = [], None, None
    for member, path in paths.items():  # each member on its own test cache, apart from evaluate_candidates
        model, stored = checkpoints.load_checkpoint(path, device="cpu")
        test = load_images(data_dir, work_dir, "test", stored["image_size"], stored["color_mode"],
                           progress=False)
        proba = loop.predict_proba(model, test.images, stored["normalization"], device="cpu")
        np.testing.assert_allclose(final.predictions[member]["probabilities"], proba, rtol=1e-5, atol=1e-6)
        calibrated.append(apply_temperature(proba, stored["extra"]["temperature"]))
        labels, relpaths = test.labels.numpy(), list(test.relpaths)
    mean = np.mean(calibrated, axis=0)
    ensemble = final.predictions[name]
    assert ensemble["relpaths"] == relpaths and ensemble["members"] == list(evaluation.ENSEMBLE_MEMBERS)
    np.testing.assert_allclose(ensemble["probabilities"], mean, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ensemble["probabilities"].sum(axis=1), 1.0)
    assert ensemble["predicted"] == mean.argmax(axis=1).tolist()
    expected = zero_one_loss(labels, mean.argmax(axis=1))
    assert final.scores[name]["all"]["zero_one_loss"] == pytest.approx(expected)
    assert final.scores[name]["all"]["errors"] == int((mean.argmax(axis=1) != labels).sum())

    # in the McNemar pairs (Holm over all 6 pairs of 4 candidates), the findings and the results
    pairs = {(p["a"], p["b"]) for p in final.paired}
    assert len(final.paired) == 6 and sum(name in pair for pair in pairs) == 3
    findings = report.final_test_findings(final)
    assert any(line.startswith(f"{name} (mean of the calibrated probabilities") for line in findings)
    assert sum(name in line and " vs " in line for line in findings) == 3
    check = evaluation.calibration_check(final, name)
    assert check["members"] == list(evaluation.ENSEMBLE_MEMBERS) and check["before"] == check["after"]
    assert "none of its own" in report.calibration_finding(name, check)
    assert report.most_confident_test_errors(final, name, 3) == sorted(
        report.most_confident_test_errors(final, name, 3), key=lambda row: -row["confidence"])
    results = report.final_results(final, check, findings, synthetic=True)
    assert name in results["models"] and name in results["scores"]
    json.dumps(results, default=str)
    # the ensemble has no CV or validation result of its own, so best_by_cv never picks it
    assert report.best_by_cv(work_dir, list(paths)) in paths


def test_no_ensemble_without_all_three_members(members, tmp_path):
    data_dir, work_dir, paths, _ = _work(members, tmp_path)
    two = {name: paths[name] for name in ("simple_cnn", "resnet_like")}
    assert evaluation.with_ensemble(two) == two
    final = _evaluate(data_dir, work_dir, two)
    assert set(final.scores) == set(two) and len(final.paired) == 1


def test_look_record_identifies_the_ensemble_by_its_members(members, tmp_path):
    data_dir, work_dir, paths, other = _work(members, tmp_path)
    name = evaluation.ENSEMBLE
    first = _evaluate(data_dir, work_dir, paths)
    [look] = first.looks
    assert first.n_looks == 1 and sorted(look["candidates"]) == sorted([*paths, name])
    recorded = look["candidates"][name]
    assert recorded["checkpoint"] is None and recorded["sha256"]
    assert {m: ident["sha256"] for m, ident in recorded["members"].items()} == {
        m: test_looks.file_sha256(p) for m, p in paths.items()}

    # the same three members again, even as copies elsewhere: the same candidate set, no refusal, no new look
    moved = {m: shutil.copy(p, tmp_path / f"copy-{m}.pt") for m, p in paths.items()}
    again = _evaluate(data_dir, work_dir, moved)
    assert again.n_looks == 1 and len(again.looks) == 1

    # without the ensemble: the same checkpoints, no new look
    assert _evaluate(data_dir, work_dir, paths, ensemble=False).n_looks == 1

    # a changed member (deeper_cnn retrained with another seed, same name and path): a new set, refused
    # unless forced
    shutil.copy(other, paths["deeper_cnn"])
    with pytest.raises(MuffinError, match="already scored"):
        _evaluate(data_dir, work_dir, paths)
    forced = _evaluate(data_dir, work_dir, paths, allow_new_look=True)
    assert forced.n_looks == 2
    old, new = (x["candidates"][name] for x in forced.looks)
    assert old["sha256"] != new["sha256"]
    assert new["members"]["deeper_cnn"]["sha256"] == test_looks.file_sha256(other)


def test_06s_choice_is_the_existing_model_when_03_05_trained_exactly_that_configuration(members, tmp_path,
                                                                                          monkeypatch):
    # 06's grid often chooses the deployed recipe: then notebook 03's simple_cnn IS the tuned model, and 09
    # must score it once (no retraining, no identical second candidate in its paired tests).
    data_dir, work_dir, paths, _ = _work(members, tmp_path)
    candidates = {name: str(path) for name, path in paths.items()}
    chosen = BASE.replace(model="simple_cnn", image_size=SIZES["simple_cnn"])

    def no_training(*args, **kwargs):
        raise AssertionError("06's choice was trained again although notebook 03 has that model")

    monkeypatch.setattr(loop, "fit", no_training)
    assert evaluation.tuned_candidate(data_dir, work_dir, chosen.to_dict(), candidates, device="cpu",
                                      progress=False) == ("simple_cnn", candidates["simple_cnn"])
    monkeypatch.undo()
    # another configuration is trained, on the same fit split, under its own name
    other = chosen.replace(lr=1e-3).to_dict()
    name, path = evaluation.tuned_candidate(data_dir, work_dir, other, candidates, device="cpu",
                                            progress=False)
    assert name == evaluation.tuned_name(other) and path.endswith("tuned.pt")
    assert torch.load(path, weights_only=True)["config_key"] == TrainConfig.from_dict(other).key()
