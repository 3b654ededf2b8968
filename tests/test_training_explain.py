"""explain (Grad-CAM through Captum) and calibration (temperature scaling, ECE)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from muffin_lib.errors import MuffinError
from muffin_lib.training import calibration, explain
from muffin_lib.training.models import MODEL_NAMES, build_model


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gradcam_layer_is_the_last_feature_map(name):
    model = build_model(name, in_channels=3, image_size=64)
    layer = explain.gradcam_layer(model)
    seen = {}

    def record(module, inputs, output):
        seen["shape"] = tuple(output.shape)

    layer.register_forward_hook(record)
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    assert len(seen["shape"]) == 4 and min(seen["shape"][-2:]) >= 2


def test_gradcam_finds_the_region_that_decides():
    # Feature channel 0 copies the red input, channel 1 the green one; only channel 0 reaches the "muffin"
    # logit. The heat must sit on the red square, not on the equally bright green one.
    model = build_model("simple_cnn", in_channels=3, image_size=32)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for conv in (model.features[0], model.features[3], model.features[6]):
            conv.weight[0, 0, 1, 1] = conv.weight[1, 1, 1, 1] = 1.0
        mask = torch.zeros(64, 4, 4)  # the 32 px input is 4 x 4 after three poolings
        mask[0] = 1.0
        model.classifier[1].weight[0] = mask.flatten()
        model.classifier[3].weight[1, 0] = 1.0
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    images[0, 0, :16, :16] = images[0, 1, 16:, 16:] = 200
    images[1, 0, 16:, 16:] = images[1, 1, :16, :16] = 200
    heats, proba = explain.gradcam(model, images, {"mean": [0.0] * 3, "std": [1.0] * 3}, target=1)
    assert heats.shape == (2, 32, 32) and proba.shape == (2, 2)
    assert np.all((heats >= 0) & (heats <= 1))
    red = [heats[0, :12, :12], heats[1, 20:, 20:]]
    green = [heats[0, 20:, 20:], heats[1, :12, :12]]
    for hot, cold in zip(red, green, strict=True):
        assert hot.mean() > 0.9 and cold.max() < 0.05


def test_overlay_and_caption():
    image = torch.randint(0, 255, (1, 20, 30), dtype=torch.uint8)
    picture = explain.overlay(image, np.random.rand(20, 30))
    assert picture.shape == (20, 30, 3) and picture.dtype == np.uint8
    assert explain.caption(np.array([0.2, 0.8])) == "muffin 0.80"
    assert explain.caption(np.array([0.2, 0.8]), true_label=0) == "muffin 0.80 (true: chihuahua)"


def _overconfident(n=4000, sharpen=3.0, seed=0):
    """Labels drawn from calibrated probabilities, and the same probabilities made overconfident."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, size=(n, 2))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = (rng.random(n) < p[:, 1]).astype(int)
    sharp = np.exp(sharpen * logits)
    return sharp / sharp.sum(1, keepdims=True), labels


def test_temperature_undoes_overconfidence_and_keeps_every_decision():
    proba, labels = _overconfident()
    temperature = calibration.fit_temperature(proba, labels)
    assert temperature == pytest.approx(3.0, rel=0.15)
    calibrated = calibration.apply_temperature(proba, temperature)
    assert np.array_equal(calibrated.argmax(1), proba.argmax(1))
    before, after = calibration.reliability(proba, labels), calibration.reliability(calibrated, labels)
    assert after["ece"] < before["ece"] / 2 and before["accuracy"] == after["accuracy"]
    assert sum(b["count"] for b in after["bins"]) == len(labels)


def test_reliability_of_a_perfectly_calibrated_model_is_near_zero():
    rng = np.random.default_rng(1)
    p1 = rng.uniform(0, 1, 20000)
    labels = (rng.random(20000) < p1).astype(int)
    assert calibration.reliability(np.stack([1 - p1, p1], 1), labels)["ece"] < 0.02
    assert calibration.apply_temperature(np.array([[0.3, 0.7]]), 1.0) == pytest.approx(np.array([[0.3, 0.7]]))


def test_calibration_input_errors():
    with pytest.raises(MuffinError, match="positive"):
        calibration.apply_temperature(np.array([[0.5, 0.5]]), 0.0)
    with pytest.raises(MuffinError, match="one label per prediction"):
        calibration.fit_temperature(np.array([[0.5, 0.5]]), [0, 1])
    with pytest.raises(MuffinError, match="N x classes"):
        calibration.fit_temperature(np.array([0.5, 0.5]), [0])


def test_calibration_finding_states_the_numbers():
    from muffin_lib.study.report import calibration_finding

    check = {"temperature": 1.8, "fitted": True, "n": 856,
             "before": {"ece": 0.071, "accuracy": 0.94}, "after": {"ece": 0.018, "accuracy": 0.94}}
    text = calibration_finding("deeper_cnn", check)
    assert "0.071" in text and "0.018" in text and "1.80" in text
    assert "overconfident" in text and "856" in text
    assert "predates" in calibration_finding("x", {**check, "fitted": False})


def test_your_photo_reads_both_upload_formats_and_keeps_only_the_name(tmp_path):
    from muffin_lib.study import your_photo

    v8 = ({"name": "dog.jpg", "content": memoryview(b"abc")},)
    v7 = {"dog.jpg": {"content": b"abc", "metadata": {}}}
    assert your_photo._uploaded_files(v8) == your_photo._uploaded_files(v7) == [("dog.jpg", b"abc")]
    saved = your_photo.save_upload("../../evil/dog.jpg", b"abc", tmp_path)
    assert saved == tmp_path.resolve() / "uploads" / "dog.jpg" and saved.read_bytes() == b"abc"
    with pytest.raises(MuffinError, match="does not exist"):
        your_photo.predict_photo(tmp_path / "x.pt", tmp_path / "missing.jpg", tmp_path)


def test_calibration_check_uses_the_twin_free_predictions_already_made():
    from muffin_lib.selection.evaluation import FinalTest, calibration_check

    proba, labels = _overconfident(n=400)
    relpaths = [f"test/x/{i}.jpg" for i in range(400)]
    predictions = {"m": {"relpaths": relpaths, "labels": labels.tolist(), "probabilities": proba,
                         "temperature": 3.0}}
    final = FinalTest({}, [], predictions, n_test=400, n_twin_free=300, twin_free_paths=relpaths[:300])
    check = calibration_check(final, "m")
    assert check["n"] == 300 and check["fitted"] and check["temperature"] == 3.0
    assert check["before"] == calibration.reliability(proba[:300], labels[:300])
    assert check["after"]["ece"] < check["before"]["ece"]
    unfitted = calibration_check(FinalTest({}, [], {"m": {**predictions["m"], "temperature": None}},
                                           twin_free_paths=relpaths[:300]), "m")
    assert not unfitted["fitted"] and unfitted["after"]["ece"] == pytest.approx(unfitted["before"]["ece"])
