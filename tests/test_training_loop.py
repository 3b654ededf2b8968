"""Notebook 03 writes out the loop inside ``train_model``: its cells, run as they stand in the notebook, give
``train_model``'s (``engine.fit``'s) history for the same seed."""

from __future__ import annotations

import runpy
from pathlib import Path

import nbformat
import pytest
import torch

from muffin_lib.study import notebook
from muffin_lib.training import engine, models, train

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "03_simple_cnn.ipynb"
LOOP_TAG = runpy.run_path(str(ROOT / "scripts" / "build_model_notebooks.py"), run_name="not_main")["LOOP_TAG"]


def _loop_cells() -> list[str]:
    cells = [c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if LOOP_TAG in c.metadata.get("tags", [])]
    assert len(cells) == 3, f"notebook 03 should tag its data, parts and loop cells {LOOP_TAG!r}"
    return cells


@pytest.mark.parametrize("amp", ["auto", "bf16"])
def test_the_written_out_loop_is_train_models_loop(synthetic_data_dir, tmp_path, amp):
    config = engine.TrainConfig(model="simple_cnn", image_size=32, color_mode="grayscale", epochs=2, batch_size=16,
                                amp=amp)
    params = notebook.apply_profile("full", "03_simple_cnn", {
        "data_dir": synthetic_data_dir, "work_dir": tmp_path, "device": "cpu", "val_fraction": 0.2, "loop_epochs": 2,
    })
    namespace = {"params": params, "config": config, "models": models}
    for source in _loop_cells():
        exec(compile(source, str(NOTEBOOK), "exec"), namespace)
    assert namespace["short"] == config  # loop_epochs == epochs: the same run

    run = train.train_model(synthetic_data_dir, tmp_path, config, val_fraction=0.2, device="cpu", progress=False)
    assert not run.resumed
    written_out = namespace["history"]
    assert [h["epoch"] for h in written_out] == [h["epoch"] for h in run.history] == [1, 2]
    for mine, theirs in zip(written_out, run.history, strict=True):
        # Same weights after every epoch: the validation scores agree bit for bit.
        assert mine["val_loss"] == theirs["val_loss"]
        assert mine["val_zero_one_loss"] == theirs["val_zero_one_loss"]
        # fit sums the batch losses on the device in float32, the loop in Python floats.
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
    for mine, theirs in zip(namespace["model"].state_dict().values(), run.model.state_dict().values(), strict=True):
        assert torch.equal(mine.cpu(), theirs.cpu())


def test_epoch_batches_is_fits_batch_order():
    order = torch.Generator().manual_seed(3)
    first, second = engine.epoch_batches(33, 16, order), engine.epoch_batches(33, 16, order)
    assert [len(b) for b in first] == [16, 16] == [len(b) for b in second]  # the batch of one is dropped
    assert engine.steps_per_epoch(33, 16) == 2 and engine.steps_per_epoch(34, 16) == 3
    assert not torch.equal(torch.cat(first), torch.cat(second))  # a new order every epoch
    assert torch.equal(torch.cat(first), torch.randperm(33, generator=torch.Generator().manual_seed(3))[:32])
