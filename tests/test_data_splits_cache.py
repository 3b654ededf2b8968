"""splits, cache and datasets: stable stratified splits, cache hits and rebuilds, the Dataset view."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from muffin_lib.config import WorkDir
from muffin_lib.data.cache import load_images
from muffin_lib.data.datasets import TensorImageDataset, open_original
from muffin_lib.data.imageio import preprocess_image
from muffin_lib.data.splits import inner_folds, load_or_create_splits, make_split_plan
from muffin_lib.errors import MuffinError

LABELS = np.array([0] * 60 + [1] * 40)


def test_val_split_is_stratified_disjoint_and_covering():
    plan = make_split_plan(LABELS, val_fraction=0.2, n_splits=5, seed=0, fingerprint="f")
    assert len(plan.val_idx) == 20 and np.bincount(LABELS[plan.val_idx]).tolist() == [12, 8]
    assert np.intersect1d(plan.train_idx, plan.val_idx).size == 0
    assert np.array_equal(np.union1d(plan.train_idx, plan.val_idx), np.arange(100))


def test_folds_are_disjoint_stratified_and_cover_everything():
    plan = make_split_plan(LABELS, n_splits=5, seed=3, fingerprint="f")
    tests = [test for _, test in plan.folds]
    assert len(tests) == 5
    assert np.array_equal(np.sort(np.concatenate(tests)), np.arange(100))  # each index tested exactly once
    for train, test in plan.folds:
        assert np.intersect1d(train, test).size == 0 and len(train) + len(test) == 100
        assert np.bincount(LABELS[test]).tolist() == [12, 8]


def test_plans_are_seeded():
    a, b = make_split_plan(LABELS, seed=1), make_split_plan(LABELS, seed=1)
    assert np.array_equal(a.val_idx, b.val_idx)
    assert not np.array_equal(a.val_idx, make_split_plan(LABELS, seed=2).val_idx)


def test_inner_folds_index_the_subset():
    subset = LABELS[::2]
    folds = inner_folds(subset, 3, seed=0)
    assert len(folds) == 3
    assert np.array_equal(np.sort(np.concatenate([test for _, test in folds])), np.arange(len(subset)))


def test_too_few_images_per_class_is_a_clear_error():
    with pytest.raises(MuffinError, match="at least 5 images of every class"):
        make_split_plan(np.array([0, 0, 0, 1, 1, 1]), n_splits=5)


def test_saved_splits_are_reloaded_and_checked_against_the_data(tmp_path):
    first = load_or_create_splits(tmp_path, LABELS, "abc", seed=0, groups=None)
    again = load_or_create_splits(tmp_path, LABELS, "abc", seed=0, groups=None)
    assert np.array_equal(first.val_idx, again.val_idx) and np.array_equal(first.train_idx, again.train_idx)
    for (tr1, te1), (tr2, te2) in zip(first.folds, again.folds, strict=True):
        assert np.array_equal(tr1, tr2) and np.array_equal(te1, te2)

    other = load_or_create_splits(tmp_path, LABELS, "abc", seed=1, n_splits=3, groups=None)
    assert len(other.folds) == 3
    stored = json.loads(WorkDir(tmp_path).splits_file.read_text())
    assert len(stored["plans"]) == 2

    with pytest.raises(MuffinError, match=r"data changed.*splits\.json"):
        load_or_create_splits(tmp_path, LABELS, "different-files", seed=0, groups=None)
    with pytest.raises(MuffinError, match="data changed"):
        load_or_create_splits(tmp_path, LABELS[:90], "abc", seed=0, groups=None)


@pytest.fixture
def data_copy(synthetic_data_dir, tmp_path):
    return shutil.copytree(synthetic_data_dir, tmp_path / "data")


def test_cache_builds_then_hits_and_matches_preprocess_image(data_copy, tmp_path, caplog):
    work = tmp_path / "work"
    caplog.set_level(logging.INFO, logger="muffin_lib.data.cache")
    cache = load_images(data_copy, work, "train", 32, "grayscale", progress=False)
    assert cache.images.dtype == torch.uint8 and tuple(cache.images.shape) == (64, 1, 32, 32)
    assert cache.labels.dtype == torch.int64 and cache.class_counts() == {"chihuahua": 32, "muffin": 32}
    assert cache.relpaths == sorted(cache.relpaths) and cache.synthetic
    assert torch.equal(cache.images[5], preprocess_image(data_copy / cache.relpaths[5], 32, "grayscale"))
    assert "cache built" in caplog.text

    caplog.clear()
    hit = load_images(data_copy, work, "train", 32, "grayscale", progress=False)
    assert "cache hit" in caplog.text and hit.key == cache.key and hit.path == cache.path
    assert torch.equal(hit.images, cache.images) and torch.equal(hit.labels, cache.labels)


def test_cache_is_rebuilt_when_files_or_settings_change(data_copy, tmp_path, caplog):
    work = tmp_path / "work"
    caplog.set_level(logging.INFO, logger="muffin_lib.data.cache")
    first = load_images(data_copy, work, "test", 24, "rgb", progress=False)
    assert tuple(first.images.shape) == (24, 3, 24, 24)

    other_size = load_images(data_copy, work, "test", 16, "rgb", progress=False)
    other_mode = load_images(data_copy, work, "test", 24, "grayscale", progress=False)
    assert len({first.key, other_size.key, other_mode.key}) == 3
    assert tuple(other_mode.images.shape) == (24, 1, 24, 24)

    Image.new("RGB", (30, 30), (120, 80, 40)).save(data_copy / "test" / "muffin" / "added.jpg")
    caplog.clear()
    grown = load_images(data_copy, work, "test", 24, "rgb", progress=False)
    assert "cache built" in caplog.text and len(grown) == 25 and grown.key != first.key
    assert grown.fingerprint != first.fingerprint
    assert not first.path.exists()  # the stale file for the same data and settings is gone
    assert other_size.path.exists()


def test_rejected_files_are_skipped_with_a_warning(data_copy, tmp_path, caplog):
    (data_copy / "train" / "muffin" / "broken.jpg").write_bytes(b"")
    cache = load_images(data_copy, tmp_path / "work", "train", 16, "grayscale", progress=False)
    assert len(cache) == 64 and "broken.jpg" in caplog.text


def test_bad_settings_are_clear_errors(data_copy, tmp_path):
    with pytest.raises(MuffinError, match="color_mode"):
        load_images(data_copy, tmp_path, "train", 32, "sepia", progress=False)
    with pytest.raises(MuffinError, match="split"):
        load_images(data_copy, tmp_path, "validation", 32, "rgb", progress=False)


def test_dataset_view_and_original(data_copy, tmp_path):
    cache = load_images(data_copy, tmp_path / "work", "train", 16, "rgb", progress=False)
    dataset = TensorImageDataset(cache, indices=[3, 10])
    image, label = dataset[1]
    assert len(dataset) == 2 and image.dtype == torch.uint8 and tuple(image.shape) == (3, 16, 16)
    assert label.item() == cache.labels[10].item()
    assert torch.equal(dataset.labels, cache.labels[[3, 10]])
    assert len(TensorImageDataset(cache)) == len(cache)
    original = open_original(cache, 10)
    assert isinstance(original, Image.Image) and original.mode in ("RGB", "L") and original.size == (48, 48)
    with pytest.raises(IndexError):
        TensorImageDataset(cache, indices=[len(cache)])
