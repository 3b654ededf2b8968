"""The Ray Tune backend runs the same trials as the serial one; without Ray it says how to install it."""

from __future__ import annotations

import sys

import pytest

from muffin_lib import engine
from muffin_lib.cache import load_images
from muffin_lib.errors import MuffinError
from muffin_lib.selection import cross_validate, grid_search
from muffin_lib.splits import load_or_create_splits
from muffin_lib.trials import TrialStore

TINY = engine.TrainConfig(model="simple_cnn", image_size=32, epochs=1, batch_size=16, lr=3e-3)


@pytest.fixture(scope="module")
def cache_and_folds(synthetic_data_dir, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("ray-work")
    cache = load_images(synthetic_data_dir, work_dir, "train", 32, "grayscale", progress=False)
    plan = load_or_create_splits(work_dir, cache.labels, cache.fingerprint, n_splits=2, seed=0)
    return cache, plan.folds


def test_missing_ray_is_a_clear_error(cache_and_folds, tmp_path, monkeypatch):
    cache, folds = cache_and_folds
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.tune", None)
    with pytest.raises(MuffinError, match=r"pip install 'muffin-lab\[ray\]'"):
        cross_validate(TINY, cache, folds, store=TrialStore(tmp_path / "t.sqlite"), backend="ray", progress=False)
    with pytest.raises(MuffinError, match="backend must be one of"):
        cross_validate(TINY, cache, folds, backend="dask", progress=False)


def test_ray_runs_the_same_trials_as_serial(cache_and_folds, tmp_path):
    pytest.importorskip("ray.tune")
    cache, folds = cache_and_folds
    grid = {"lr": [3e-3, 1e-3]}
    serial_store = TrialStore(tmp_path / "serial.sqlite")
    ray_store = TrialStore(tmp_path / "ray.sqlite")
    serial = grid_search(TINY, grid, cache, folds, store=serial_store, device="cpu", progress=False)
    # One trial is already stored: Ray must skip it and run only the other three.
    ray_store.add_record(serial.trials[0])
    seen = []
    result = grid_search(
        TINY,
        grid,
        cache,
        folds,
        store=ray_store,
        device="cpu",
        progress=False,
        backend="ray",
        on_trial=seen.append,
        ray_options={"num_cpus": 2, "cpus_per_trial": 1},
    )
    assert sorted(r["status"] for r in seen) == ["stored", "trained", "trained", "trained"]
    assert ray_store.completed() == serial_store.completed()
    assert len(ray_store) == 4
    assert [t["config_key"] for t in result.trials] == [t["config_key"] for t in serial.trials]
    assert all(r["device"] == "cpu" and 0 <= r["zero_one_loss"] <= 1 for r in ray_store.records())
    assert list(result.table["lr"]) == [3e-3, 1e-3]
