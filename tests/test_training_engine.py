"""loop and recipe: config, fit/evaluate/predict on tensors, reproducibility, AMP, checkpoints, inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from muffin_lib.errors import MuffinError
from muffin_lib.training import augment, checkpoints, loop, recipe, tensors
from muffin_lib.training.recipe import TrainConfig

SIZE = 32


def _bright_vs_dark(n: int = 64, channels: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An easy task: label 1 images are brighter. uint8 N x C x 32 x 32."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    noise = torch.randint(0, 120, (n, channels, SIZE, SIZE), generator=g)
    images = (noise + 100 * labels.view(-1, 1, 1, 1)).clamp(0, 255).to(torch.uint8)
    return images, labels


def _config(**changes) -> TrainConfig:
    base = {"model": "simple_cnn", "image_size": SIZE, "color_mode": "grayscale", "epochs": 2,
            "batch_size": 16, "lr": 1e-3, "augment": "flip_rotate", "label_smoothing": 0.0}
    return TrainConfig(**{**base, **changes})


def test_config_key_dict_and_replace():
    config = _config()
    assert config.key() == _config().key() and len(config.key()) == 12
    assert config.replace(channels_last=False, compile=True).key() == config.key()  # speed only
    assert config.replace(lr=3e-3).key() != config.key()
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.replace(epochs=5).epochs == 5 and config.epochs == 2
    with pytest.raises(MuffinError, match="schedule"):
        config.replace(schedule="step")
    with pytest.raises(MuffinError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({**config.to_dict(), "colour": "red"})
    with pytest.raises(MuffinError, match="pretrained"):
        TrainConfig(model="simple_cnn", pretrained=True)


def test_fit_learns_and_reports_history():
    images, labels = _bright_vs_dark(96)
    result = loop.fit(_config(epochs=3, lr=3e-3), (images, labels), (images[:32], labels[:32]), device="cpu",
                      progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    keys = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_zero_one_loss", "lr",
            "seconds", "images_per_s"}
    assert all(set(h) == keys for h in result.history)
    assert result.history[-1]["val_zero_one_loss"] <= 0.1
    assert not result.model.training and result.device == "cpu" and result.amp == "off"
    assert result.history[-1]["lr"] < 1e-4  # one-cycle ends near zero
    scores = loop.evaluate(result.model, images[:32], labels[:32], result.normalization, device="cpu")
    assert scores["zero_one_loss"] == pytest.approx(result.history[-1]["val_zero_one_loss"])
    assert scores["errors"] == round(scores["zero_one_loss"] * 32) and scores["n"] == 32


def test_flip_tta_scores_the_mean_probability_of_each_image_and_its_mirror():
    images, labels = _bright_vs_dark(64)
    result = loop.fit(_config(epochs=1), (images, labels), device="cpu", progress=False)
    held_out, held_labels = _bright_vs_dark(40, seed=1)
    scores = loop.evaluate(result.model, held_out, held_labels, result.normalization, device="cpu",
                           flip_tta=True)
    plain = loop.evaluate(result.model, held_out, held_labels, result.normalization, device="cpu")
    assert {k: scores[k] for k in plain} == plain  # the plain scores do not move
    by_hand = (loop.predict_proba(result.model, held_out, result.normalization, device="cpu")
               + loop.predict_proba(result.model, held_out.flip(-1), result.normalization, device="cpu"))
    expected = int((by_hand.argmax(1) != held_labels.numpy()).sum())
    assert scores["flip_tta_errors"] == expected and scores["flip_tta_zero_one_loss"] == expected / 40
    # Images that are their own mirror: the flip changes nothing.
    symmetric = torch.cat([held_out[..., : SIZE // 2], held_out[..., : SIZE // 2].flip(-1)], dim=-1)
    same = loop.evaluate(result.model, symmetric, held_labels, result.normalization, device="cpu",
                         flip_tta=True)
    assert same["flip_tta_errors"] == same["errors"]


def test_normalization_comes_from_the_training_images_only():
    images, labels = _bright_vs_dark(32)
    val_images = torch.full((8, 1, SIZE, SIZE), 255, dtype=torch.uint8)
    result = loop.fit(_config(epochs=1), (images, labels), (val_images, labels[:8]), device="cpu",
                      progress=False)
    pixels = images.double() / 255
    assert result.normalization["mean"] == pytest.approx([pixels.mean().item()])
    assert result.normalization["std"] == pytest.approx([pixels.std(unbiased=False).item()])


def test_same_seed_same_losses_on_cpu():
    images, labels = _bright_vs_dark(48)
    config = _config(model="deeper_cnn", augment="flip_rotate_crop")
    runs = [loop.fit(config, (images, labels), (images[:16], labels[:16]), device="cpu", progress=False)
            for _ in range(2)]
    losses = [[(h["train_loss"], h["val_loss"]) for h in run.history] for run in runs]
    assert losses[0] == losses[1]
    other = loop.fit(config.replace(seed=1), (images, labels), device="cpu", progress=False)
    assert other.history[0]["train_loss"] != runs[0].history[0]["train_loss"]


def test_bf16_autocast_runs_on_cpu():
    images, labels = _bright_vs_dark(32, channels=3)
    config = _config(model="resnet_like", color_mode="rgb", amp="bf16", epochs=1)
    result = loop.fit(config, (images, labels), (images[:8], labels[:8]), device="cpu", progress=False)
    assert result.amp == "bf16" and math.isfinite(result.history[0]["train_loss"])
    with pytest.raises(MuffinError, match="needs a CUDA GPU"):
        loop.fit(config.replace(amp="fp16"), (images, labels), device="cpu", progress=False)


def test_evaluation_never_augments(monkeypatch):
    images, labels = _bright_vs_dark(40)
    calls = []

    def counting(x, **kwargs):
        calls.append(x.shape[0])
        return augment_batch(x, **kwargs)

    augment_batch = augment.augment_batch
    monkeypatch.setattr(augment, "augment_batch", counting)
    result = loop.fit(_config(epochs=2), (images, labels), (images[:24], labels[:24]), device="cpu",
                      progress=False)
    assert sum(calls) == 2 * 40  # training batches only, not the 2 x 24 validation images
    calls.clear()
    loop.evaluate(result.model, images, labels, result.normalization, device="cpu")
    loop.predict_proba(result.model, images, result.normalization, device="cpu")
    assert calls == []


def test_last_batch_of_one_is_dropped():
    images, labels = _bright_vs_dark(33)
    result = loop.fit(_config(epochs=1), (images, labels), device="cpu", progress=False)
    assert result.history[0]["images_per_s"] > 0
    assert loop.batch_starts(33, 16) == [0, 16] and loop.batch_starts(34, 16) == [0, 16, 32]


def test_early_stopping_restores_the_best_epoch():
    images, labels = _bright_vs_dark(64, seed=1)
    val_images, val_labels = _bright_vs_dark(16, seed=2)
    config = _config(epochs=4, lr=0.05, schedule="constant", early_stopping_patience=1)
    result = loop.fit(config, (images, labels), (val_images, val_labels), device="cpu", progress=False)
    val_losses = [h["val_loss"] for h in result.history]
    assert result.best_epoch == int(np.argmin(val_losses)) + 1
    restored = loop.evaluate(result.model, val_images, val_labels, result.normalization, device="cpu")
    assert restored["loss"] == pytest.approx(min(val_losses), rel=1e-5)
    with pytest.raises(MuffinError, match="validation set"):
        loop.fit(config, (images, labels), device="cpu", progress=False)


def test_on_epoch_can_stop_training():
    images, labels = _bright_vs_dark(32)
    seen = []
    result = loop.fit(_config(epochs=5), (images, labels), device="cpu", progress=False,
                      on_epoch=lambda r: seen.append(r) or True)
    assert len(result.history) == 1 and result.stopped_early and seen[0]["epoch"] == 1


def test_transfer_random_init_trains_a_step():
    images, labels = _bright_vs_dark(8)
    config = _config(model="transfer", epochs=1, batch_size=8)
    result = loop.fit(config, (images, labels), device="cpu", progress=False)
    assert math.isfinite(result.history[0]["train_loss"])
    assert result.normalization["mean"] != pytest.approx([0.449])  # pretrained=False: own statistics


def test_pretrained_uses_the_networks_own_statistics():
    # EfficientNet-Lite0's own inputs: [-1, 1] (TensorFlow's training), whatever the data's statistics
    assert tensors.pretrained_normalization(3) == {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    assert tensors.pretrained_normalization(1) == {"mean": [0.5], "std": [0.5]}


def test_checkpoint_round_trip(tmp_path):
    images, labels = _bright_vs_dark(32, channels=3)
    config = _config(model="resnet_like", color_mode="rgb", epochs=1)
    result = loop.fit(config, (images, labels), (images[:8], labels[:8]), device="cpu", progress=False)
    path = checkpoints.save_checkpoint(tmp_path / "ck" / "model.pt", result, extra={"fingerprint": "abc"})
    model, checkpoint = checkpoints.load_checkpoint(path, device="cpu")
    assert checkpoint["model_name"] == "resnet_like" and checkpoint["color_mode"] == "rgb"
    assert checkpoint["class_names"] == ["chihuahua", "muffin"]
    assert checkpoint["extra"] == {"fingerprint": "abc"}
    assert checkpoint["config_key"] == config.key() and len(checkpoint["history"]) == 1
    assert TrainConfig.from_dict(checkpoint["config"]) == config
    before = loop.predict_proba(result.model, images, result.normalization, device="cpu")
    after = loop.predict_proba(model, images, checkpoint["normalization"], device="cpu")
    assert before.shape == (32, 2) and np.array_equal(before, after)
    assert np.allclose(after.sum(axis=1), 1.0, atol=1e-6)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left behind


def test_checkpoint_errors(tmp_path):
    with pytest.raises(MuffinError, match="does not exist"):
        checkpoints.load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(MuffinError, match="could not be read"):
        checkpoints.load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(MuffinError, match="not a muffin checkpoint"):
        checkpoints.load_checkpoint(foreign)


def test_input_validation():
    images, labels = _bright_vs_dark(16)
    config = _config(epochs=1)
    cases = [
        ((images.float(), labels), "dtype uint8"),
        ((images[:, 0], labels), "4-D"),
        ((images[:0], labels[:0]), "empty"),
        ((images.expand(-1, 3, -1, -1), labels), "3 channel"),
        ((images[:, :, :16, :16], labels), "expects 32x32"),
        ((images, labels + 1), r"0\.\.1"),
        ((images, labels[:5]), "one per image"),
        ((images, labels.float()), "integer"),
    ]
    for (x, y), message in cases:
        with pytest.raises(MuffinError, match=message):
            loop.fit(config, (x, y), device="cpu", progress=False)
    with pytest.raises(MuffinError, match=r"validation data must be a pair \(images, labels\)"):
        loop.fit(config, (images, labels), (images,), device="cpu", progress=False)
    result = loop.fit(config, (images.numpy(), labels.tolist()), device="cpu", progress=False)  # numpy, lists
    with pytest.raises(MuffinError, match="expects 32x32"):
        loop.predict_proba(result.model, images[:, :, :20, :20], result.normalization, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", "auto", "cuda:0"])
def test_fit_evaluate_predict_on_cuda(device):
    # "cuda" resolves to an indexed device, so GPU-resident batches are used as they are (never pinned).
    from muffin_lib.training import runtime

    assert runtime.resolve_device(device) == torch.device("cuda", torch.cuda.current_device())
    images, labels = _bright_vs_dark(96)
    result = loop.fit(_config(epochs=3, lr=3e-3), (images, labels), (images[:32], labels[:32]), device=device,
                      progress=False)
    assert result.device.startswith("cuda") and result.amp == "bf16"
    assert result.history[-1]["val_zero_one_loss"] <= 0.1
    scores = loop.evaluate(result.model, images[:32], labels[:32], result.normalization, device=device)
    assert scores["zero_one_loss"] == pytest.approx(result.history[-1]["val_zero_one_loss"])


def test_device_resolution_errors():
    if not torch.cuda.is_available():
        with pytest.raises(MuffinError, match="no CUDA GPU"):
            loop.fit(_config(), _bright_vs_dark(8), device="cuda", progress=False)
    with pytest.raises(MuffinError, match="unknown device"):
        loop.fit(_config(), _bright_vs_dark(8), device="tpu", progress=False)


# ----------------------------------------------------------------------------- runtime


def test_resolve_device():
    from muffin_lib.training import runtime

    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.resolve_device(torch.device("cpu")) == torch.device("cpu")
    mps_or_cpu = "mps" if torch.backends.mps.is_available() else "cpu"
    expected = "cuda" if torch.cuda.is_available() else mps_or_cpu
    assert runtime.resolve_device("auto").type == expected
    if not torch.backends.mps.is_available():
        with pytest.raises(MuffinError, match="MPS is not available"):
            runtime.resolve_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(MuffinError, match="no CUDA GPU"):
            runtime.resolve_device("cuda:0")


def test_seed_everything_repeats_random_draws():
    from muffin_lib.training import runtime

    runtime.seed_everything(5)
    first = (torch.rand(3), np.random.rand(3))
    runtime.seed_everything(5)
    assert torch.equal(first[0], torch.rand(3)) and np.array_equal(first[1], np.random.rand(3))


def test_tune_cpu_allocator_switch_and_idempotence(monkeypatch, caplog):
    import platform
    import sys

    from muffin_lib.training import runtime

    monkeypatch.setattr(runtime, "_allocator_state", None)
    monkeypatch.setenv("MUFFIN_TUNE_MALLOC", "0")
    assert runtime.tune_cpu_allocator() is False
    assert "disabled" in runtime.allocator_state()
    monkeypatch.delenv("MUFFIN_TUNE_MALLOC")
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    with caplog.at_level("INFO", logger="muffin_lib.training.runtime"):
        assert runtime.tune_cpu_allocator() is glibc
        assert runtime.tune_cpu_allocator() is glibc
    assert sum("CPU allocator tuned" in r.message for r in caplog.records) == (1 if glibc else 0)
    if glibc:
        assert runtime.allocator_state().startswith("tuned: M_MMAP_MAX=0")


def test_describe_environment():
    from muffin_lib.training import runtime

    info = runtime.describe_environment("cpu")
    assert info["device"] == "cpu" and info["torch"] == torch.__version__ and info["cpu_count"] >= 1
    for key in ("python", "gpu_name", "gpu_memory_gb", "ram_gb", "cpu_allocator", "torch_threads"):
        assert key in info


@pytest.mark.parametrize(("capability", "expected"),
                         [((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_amp_uses_bf16_only_where_the_gpu_has_it(monkeypatch, capability, expected):
    # A Colab T4 (7.5) "supports" bf16 by emulation, far slower than its fp16 tensor cores.
    from muffin_lib.training import runtime

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a test GPU")
    assert runtime.resolve_amp("auto", torch.device("cuda", 0)) == expected
    assert runtime.resolve_amp("fp16", torch.device("cuda", 0)) == torch.float16
    if expected == torch.float16:
        with pytest.raises(MuffinError, match="no bf16 support"):
            runtime.resolve_amp("bf16", torch.device("cuda", 0))


def test_amp_is_not_part_of_the_config_key_the_execution_key_carries_the_precision():
    base = recipe.TrainConfig()
    assert base.key() == base.replace(amp="bf16").key() == base.replace(amp="off").key()
    assert base.key() != base.replace(lr=base.lr * 2).key()
