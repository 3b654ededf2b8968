"""What each device type trains in: Apple MPS's choices (contiguous NCHW, fp32 for amp="auto") as pure
functions of the device, and run on the CPU with the MPS rules patched in (``runtime.policy_device_type``)."""

from __future__ import annotations

import logging

import pytest
import torch

from muffin_lib.errors import MuffinError
from muffin_lib.training import bench, checkpoints, loop, models, recipe, runtime, tensors

MPS, CPU, CUDA = torch.device("mps"), torch.device("cpu"), torch.device("cuda", 0)


def test_mps_trains_contiguous_where_cpu_and_cuda_train_channels_last():
    # torch.device("mps") is only a name: the decisions are asked about it on any machine.
    assert runtime.channels_last_for(MPS) is False and runtime.channels_last_for("mps", True) is False
    assert runtime.memory_format_for(MPS, True) == torch.contiguous_format
    for device in (CPU, CUDA, "cpu"):
        assert runtime.channels_last_for(device, True) is True
        assert runtime.memory_format_for(device, True) == torch.channels_last
    for device in (MPS, CPU, CUDA):  # not asked for: contiguous everywhere
        assert runtime.memory_format_for(device, False) == torch.contiguous_format


def test_amp_auto_on_mps_is_fp32_and_explicit_requests_are_obeyed(monkeypatch):
    assert runtime.resolve_amp("auto", MPS) is None
    assert runtime.resolve_amp("off", MPS) is None
    assert runtime.resolve_amp("fp16", MPS) == torch.float16
    assert runtime.resolve_amp("bf16", MPS) == torch.bfloat16
    monkeypatch.setattr(torch, "__version__", "2.4.1")  # no autocast for MPS before torch 2.5
    assert runtime.resolve_amp("auto", MPS) is None
    with pytest.raises(MuffinError, match=r"needs torch >= 2.5.*use amp='auto' or 'off'"):
        runtime.resolve_amp("fp16", MPS)


def test_the_reasons_are_stated_for_mps_and_nothing_elsewhere():
    notes = runtime.device_notes(MPS, "auto", channels_last=True)
    assert len(notes) == 2
    assert "contiguous (NCHW)" in notes[0] and "#193349" in notes[0] and "#180984" in notes[0]
    assert "fp32" in notes[1] and "amp='fp16'" in notes[1]
    assert runtime.device_notes(MPS, "off", channels_last=False) == []  # nothing was overruled
    assert runtime.device_notes(CPU, "auto", channels_last=True) == []
    assert runtime.device_notes(CUDA, "auto", channels_last=True) == []


# ----------------------------------------------------------------------------- the MPS rules, run on the CPU


@pytest.fixture
def mps_rules(monkeypatch):
    """Every decision about the CPU is taken as for Apple MPS."""
    monkeypatch.setattr(runtime, "policy_device_type", lambda device: "mps")


def _rgb_task(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    noise = torch.randint(0, 120, (n, 3, 32, 32), generator=g)
    images = (noise + 100 * labels.view(-1, 1, 1, 1)).clamp(0, 255)
    return images.to(torch.uint8), labels


def _config(**changes) -> recipe.TrainConfig:
    return recipe.TrainConfig(**{"model": "simple_cnn", "image_size": 32, "color_mode": "rgb", "epochs": 1,
                                 "batch_size": 8, "augment": "flip_rotate", **changes})


def _strictly_channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _watch_inputs(monkeypatch) -> list[dict]:
    """What every model fit builds is given: the layout and dtype of its input, and whether autocast is on."""
    seen = []

    def build_and_watch(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.register_forward_pre_hook(lambda module, inputs: seen.append({
            "training": module.training, "contiguous": inputs[0].is_contiguous(),
            "channels_last": _strictly_channels_last(inputs[0]), "dtype": inputs[0].dtype,
            "autocast": torch.is_autocast_enabled("cpu"),
        }))
        return model

    real_build = models.build_model
    monkeypatch.setattr(loop, "build_model", build_and_watch)
    return seen


def test_fit_under_the_mps_rules_trains_contiguous_in_fp32_and_says_why(mps_rules, monkeypatch, caplog):
    seen = _watch_inputs(monkeypatch)
    images, labels = _rgb_task()
    with caplog.at_level(logging.INFO, logger="muffin_lib.training.loop"):
        result = loop.fit(_config(amp="auto", channels_last=True), (images[:16], labels[:16]),
                          (images[16:], labels[16:]), device="cpu", progress=False)
    assert result.amp == "off"
    assert all(p.is_contiguous() for p in result.model.parameters())
    assert not tensors.uses_channels_last(result.model)
    # train and validation
    assert seen and any(s["training"] for s in seen) and any(not s["training"] for s in seen)
    assert all(s["contiguous"] and not s["channels_last"] for s in seen)
    assert all(s["dtype"] == torch.float32 and not s["autocast"] for s in seen)
    log = caplog.text
    assert "precision fp32: Apple MPS trains in fp32 under amp auto, contiguous memory format" in log
    assert "on cpu: memory format contiguous (NCHW) on Apple MPS" in log and "pytorch/pytorch#193349" in log
    assert "amp 'auto' trains in fp32 on Apple MPS" in log


def test_fit_on_the_cpu_trains_channels_last(monkeypatch, caplog):
    # The same run under the CPU's own rules, for contrast: channels-last weights and normalised batches (the
    # augmented training batches come out of grid_sample contiguous; the weights decide the
    # convolutions' layout).
    seen = _watch_inputs(monkeypatch)
    images, labels = _rgb_task()
    with caplog.at_level(logging.INFO, logger="muffin_lib.training.loop"):
        result = loop.fit(_config(amp="off"), (images[:16], labels[:16]), (images[16:], labels[16:]),
                          device="cpu", progress=False)
    assert tensors.uses_channels_last(result.model)
    validation = [s for s in seen if not s["training"]]
    assert validation and all(s["channels_last"] for s in validation)
    assert "channels-last memory format" in caplog.text and "on cpu:" not in caplog.text


def test_prediction_and_checkpoints_under_the_mps_rules_are_contiguous(tmp_path, monkeypatch):
    images, labels = _rgb_task()
    result = loop.fit(_config(amp="off"), (images, labels), device="cpu", progress=False)
    path = checkpoints.save_checkpoint(tmp_path / "model.pt", result)
    model = result.model
    assert tensors.uses_channels_last(model)
    expected = loop.predict_proba(model, images, result.normalization, device="cpu")

    monkeypatch.setattr(runtime, "policy_device_type", lambda device: "mps")
    inputs = []
    model.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    proba = loop.predict_proba(model, images, result.normalization, device="cpu")
    assert not tensors.uses_channels_last(model) and all(p.is_contiguous() for p in model.parameters())
    assert inputs and all(x.is_contiguous() and not _strictly_channels_last(x) for x in inputs)
    assert proba == pytest.approx(expected, abs=1e-5)  # the same model, another layout

    loaded, _ = checkpoints.load_checkpoint(path, device="cpu")
    assert not tensors.uses_channels_last(loaded) and all(p.is_contiguous() for p in loaded.parameters())
    monkeypatch.undo()
    assert tensors.uses_channels_last(checkpoints.load_checkpoint(path, device="cpu")[0])


def test_train_step_and_bench_follow_the_mps_rules(mps_rules):
    config = _config(amp="auto", channels_last=True)
    model = models.build_model("simple_cnn", in_channels=3, image_size=32)
    train_step = loop.TrainStep(model, config, CPU, {"mean": [0.5] * 3, "std": [0.25] * 3}, total_steps=10)
    assert train_step.normalize.memory_format == torch.contiguous_format and train_step.amp_dtype is None
    images, labels = _rgb_task(16)
    timing = bench._muffin_pipeline(images, labels, _config(amp="auto"), CPU, seconds=0.05)
    assert timing["memory_format"] == "contiguous" and timing["amp"] == "off"
