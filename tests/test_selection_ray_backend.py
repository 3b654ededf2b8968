"""The Ray Tune backend runs the same trials as the serial one; without Ray it says how to install it."""

from __future__ import annotations

import sys

import pytest

from muffin_lib.errors import MuffinError
from muffin_lib.selection import RunOptions, cross_validate, grid_search
from muffin_lib.selection.trial_store import TrialStore
from muffin_lib.training import recipe

TINY = recipe.TrainConfig(model="simple_cnn", image_size=32, color_mode="grayscale", epochs=1, batch_size=16,
                          lr=3e-3)


def test_missing_ray_is_a_clear_error(tiny_cv_data, tmp_path, monkeypatch):
    cache, folds = tiny_cv_data
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.tune", None)
    with pytest.raises(MuffinError, match=r"pip install 'muffin-lab\[ray\]'"):
        options = RunOptions(store=TrialStore(tmp_path / "t.sqlite"), backend="ray", progress=False)
        cross_validate(TINY, cache, folds, options=options)
    with pytest.raises(MuffinError, match="backend must be one of"):
        RunOptions(backend="dask")


def test_the_ray_backend_gets_the_pending_trials_and_the_ray_options(tiny_cv_data, tmp_path, monkeypatch):
    """RunOptions(backend="ray") hands ray_backend.run_tasks the trials not yet stored, their caches, the
    device and ray_options; each record it reports is committed and passed to on_trial (Ray: a slow test)."""
    from muffin_lib.selection import ray_backend, run_task

    cache, folds = tiny_cv_data
    calls = []

    def fake_ray(tasks, caches, *, on_record, device, settings):
        calls.append({"n": len(tasks), "settings": set(caches), "device": device, "ray": settings})
        for task in tasks:
            on_record(run_task(task, caches[task.setting].images, caches[task.setting].labels, device=device))

    monkeypatch.setattr(ray_backend, "run_tasks", fake_ray)
    store, seen = TrialStore(tmp_path / "t.sqlite"), []
    serial = cross_validate(TINY, cache, folds, options=RunOptions(device="cpu", progress=False))
    store.add_record(serial.trials[0])
    options = RunOptions(store=store, device="cpu", progress=False, backend="ray", on_trial=seen.append,
                         ray_options={"num_cpus": 2, "cpus_per_trial": 1})
    result = cross_validate(TINY, cache, folds, options=options)
    assert calls == [{"n": len(folds) - 1, "settings": {(32, "grayscale")}, "device": "cpu",
                      "ray": ray_backend.RaySettings(num_cpus=2, cpus_per_trial=1)}]
    assert [r["status"] for r in seen] == ["stored"] + ["trained"] * (len(folds) - 1)
    assert len(store) == len(folds)
    assert result.config_key == serial.config_key


@pytest.mark.slow  # starts a local Ray instance: minutes
def test_ray_runs_the_same_trials_as_serial(tiny_cv_data, tmp_path):
    pytest.importorskip("ray.tune")
    cache, folds = tiny_cv_data
    grid = {"lr": [3e-3, 1e-3]}
    serial_store = TrialStore(tmp_path / "serial.sqlite")
    ray_store = TrialStore(tmp_path / "ray.sqlite")
    serial = grid_search(TINY, grid, cache, folds,
                         options=RunOptions(store=serial_store, device="cpu", progress=False))
    # One trial is already stored: Ray must skip it and run only the other three.
    ray_store.add_record(serial.trials[0])
    seen = []
    options = RunOptions(store=ray_store, device="cpu", progress=False, backend="ray", on_trial=seen.append,
                         ray_options={"num_cpus": 2, "cpus_per_trial": 1})
    result = grid_search(TINY, grid, cache, folds, options=options)
    assert sorted(r["status"] for r in seen) == ["stored", "trained", "trained", "trained"]
    assert ray_store.completed() == serial_store.completed()
    assert len(ray_store) == 4
    assert [t["config_key"] for t in result.trials] == [t["config_key"] for t in serial.trials]
    assert all(r["device"] == "cpu" and 0 <= r["zero_one_loss"] <= 1 for r in ray_store.records())
    assert list(result.table["lr"]) == [3e-3, 1e-3]


def test_gpu_keyed_trials_need_gpus_per_trial():
    """Ray hides GPUs from trials that reserve none: GPU-keyed trials would silently train on the CPU."""
    pytest.importorskip("ray.tune")
    from types import SimpleNamespace

    from muffin_lib.selection import ray_backend

    task = SimpleNamespace(execution="cuda/bf16", setting=(32, "grayscale"))
    with pytest.raises(MuffinError, match="gpus-per-trial"):
        ray_backend.run_tasks([task], {}, on_record=print,
                              settings=ray_backend.RaySettings(gpus_per_trial=0.0))
