"""Notebook 03 writes out the loop inside ``train_model`` in plain float32: its cells, run as they stand in
the notebook, give ``loop.fit``'s history in float32 and the default memory layout. The library's fast
path (bf16 autocast, channels-last) stays close to its own float32 result."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import torch

from muffin_lib.study import notebook
from muffin_lib.training import loop, models, recipe, train

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "03_simple_cnn.ipynb"
LOOP_TAG = "visible-loop"  # notebook 03's cells of the written-out loop: data, parts, one epoch, the epochs
# What the written-out loop must not contain: the speed switches live in fit, and in one aside after the loop.
SPEED_SWITCHES = ("autocast", "GradScaler", "scaler", "resolve_amp", "memory_format", "channels_last",
                  "bfloat16")


def _loop_cells() -> list[str]:
    cells = nbformat.read(NOTEBOOK, as_version=4).cells
    cells = [c.source for c in cells if LOOP_TAG in c.metadata.get("tags", [])]
    assert len(cells) >= 3, f"notebook 03 should tag the cells of its written-out loop {LOOP_TAG!r}"
    return cells


def test_the_written_out_loop_is_plain_fp32():
    source = "\n".join(_loop_cells())
    for word in SPEED_SWITCHES:
        assert word not in source, f"notebook 03's loop mentions {word!r}: speed switches go in the aside"
    assert "loss.backward()" in source and "optimizer.step()" in source


def test_the_written_out_loop_is_fits_loop_in_fp32(synthetic_data_dir, tmp_path):
    config = recipe.TrainConfig(model="simple_cnn", image_size=32, color_mode="grayscale", epochs=2,
                                batch_size=16)
    params = notebook.apply_profile("full", "03_simple_cnn", {
        "data_dir": synthetic_data_dir, "work_dir": tmp_path, "device": "cpu", "val_fraction": 0.2,
        "loop_epochs": 2,
    })
    namespace = {"params": params, "config": config, "models": models}
    for source in _loop_cells():
        exec(compile(source, str(NOTEBOOK), "exec"), namespace)
    assert namespace["short"] == config  # loop_epochs == epochs: the same run

    # train_model (loop.fit) in float32 and the default memory layout, on the notebook loop's split
    run = train.train_model(synthetic_data_dir, tmp_path, config.replace(amp="off", channels_last=False),
                            val_fraction=0.2, device="cpu", progress=False)
    assert not run.resumed and run.precision.startswith("fp32")
    written_out = namespace["history"]
    assert [h["epoch"] for h in written_out] == [h["epoch"] for h in run.history] == [1, 2]
    for mine, theirs in zip(written_out, run.history, strict=True):
        # Same weights after every epoch: the validation scores agree bit for bit.
        assert mine["val_loss"] == theirs["val_loss"]
        assert mine["val_zero_one_loss"] == theirs["val_zero_one_loss"]
        # fit sums the batch losses on the device in float32, the loop in Python floats.
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
    weights = zip(namespace["model"].state_dict().values(), run.model.state_dict().values(), strict=True)
    for mine, theirs in weights:
        assert torch.equal(mine.cpu(), theirs.cpu())


# How far the fast path may move the final training loss from float32: bf16 keeps 8 bits of mantissa, and
# channels-last only reorders the sums of the convolutions.
FAST_PATH_TOLERANCE = {"bf16": 0.05, "channels_last": 1e-3}


@pytest.mark.parametrize(("switch", "changes"), [
    ("bf16", {"amp": "bf16", "channels_last": True}),
    ("channels_last", {"amp": "off", "channels_last": True}),
])
def test_fits_fast_path_agrees_with_its_fp32_result(tiny_cv_data, switch, changes):
    data, folds = tiny_cv_data
    train_idx, val_idx = folds[0]
    config = recipe.TrainConfig(model="simple_cnn", image_size=32, color_mode="grayscale", epochs=3,
                                batch_size=16, amp="off", channels_last=False)

    def final(config):
        fit_part = (data.images[train_idx], data.labels[train_idx])
        val_part = (data.images[val_idx], data.labels[val_idx])
        result = loop.fit(config, fit_part, val_part, device="cpu", progress=False,
                          num_classes=len(data.class_names))
        return result, result.history[-1]

    fp32, fp32_last = final(config)
    fast, fast_last = final(config.replace(**changes))
    assert (fp32.amp, fast.amp) == ("off", changes["amp"])
    tolerance = FAST_PATH_TOLERANCE[switch]
    assert fast_last["train_loss"] == pytest.approx(fp32_last["train_loss"], rel=tolerance)
    assert fast_last["val_loss"] == pytest.approx(fp32_last["val_loss"], rel=tolerance)


def test_epoch_batches_is_fits_batch_order():
    order = torch.Generator().manual_seed(3)
    first, second = loop.epoch_batches(33, 16, order), loop.epoch_batches(33, 16, order)
    assert [len(b) for b in first] == [16, 16] == [len(b) for b in second]  # the batch of one is dropped
    assert loop.steps_per_epoch(33, 16) == 2 and loop.steps_per_epoch(34, 16) == 3
    assert not torch.equal(torch.cat(first), torch.cat(second))  # a new order every epoch
    assert torch.equal(torch.cat(first), torch.randperm(33, generator=torch.Generator().manual_seed(3))[:32])
