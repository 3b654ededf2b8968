"""Several trials at once in worker processes (RunOptions.workers) train the same trials as one after another,
store each as it ends, and choose how many by device, threads and memory."""

from __future__ import annotations

import time

import pytest
import torch

from muffin_lib.errors import MuffinError
from muffin_lib.selection import RunOptions, grid_search, processes
from muffin_lib.selection.trial_store import TrialStore
from muffin_lib.training import recipe

TINY = recipe.TrainConfig(model="simple_cnn", image_size=32, color_mode="grayscale", epochs=2, batch_size=16,
                          lr=3e-3)


@pytest.fixture
def one_thread():
    """Workers share the parent's threads: with one, every trial trains on one thread in both runs, so the
    serial and parallel runs compute the same arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_two_workers_train_the_same_trials_as_one_after_another(tiny_cv_data, tmp_path, one_thread):
    cache, folds = tiny_cv_data
    grid = {"lr": [3e-3, 1e-3]}
    serial_store, parallel_store = TrialStore(tmp_path / "serial.sqlite"), TrialStore(tmp_path / "par.sqlite")
    serial = grid_search(TINY, grid, cache, folds,
                         options=RunOptions(store=serial_store, device="cpu", progress=False))
    parallel_store.add_record(serial.trials[0])  # one stored trial: the workers train only the other three
    seen = []
    options = RunOptions(store=parallel_store, device="cpu", progress=False, workers=2, on_trial=seen.append)
    parallel = grid_search(TINY, grid, cache, folds, options=options)

    assert sorted(r["status"] for r in seen) == ["stored", "trained", "trained", "trained"]
    assert parallel_store.completed() == serial_store.completed() and len(parallel_store) == 4
    by_identity = {(t["config_key"], t["fold"]): t for t in serial.trials}
    for trial in parallel.trials:
        twin = by_identity[(trial["config_key"], trial["fold"])]
        assert trial["metrics"]["errors"] == twin["metrics"]["errors"]
        assert trial["metrics"]["loss"] == pytest.approx(twin["metrics"]["loss"], rel=1e-5)
    assert parallel.best == serial.best


def test_a_failing_trial_is_raised_and_the_finished_ones_stay_stored(tiny_cv_data, tmp_path, one_thread):
    cache, folds = tiny_cv_data
    # lr 1e6 diverges: fit raises its "training diverged" MuffinError inside a worker.
    grid = {"lr": [3e-3, 1e6]}
    store = TrialStore(tmp_path / "t.sqlite")
    with pytest.raises(MuffinError, match="diverged"):
        grid_search(TINY, grid, cache, folds,
                    options=RunOptions(store=store, device="cpu", progress=False, workers=2))
    # The lr 3e-3 trials go first (grid order) and end before a diverging one fails: they stay stored.
    stored = store.records()
    assert stored and all(record["config"]["lr"] == 3e-3 for record in stored)


def test_auto_keeps_one_trial_at_a_time_on_the_cpu_and_a_number_is_taken_as_given(monkeypatch):
    assert processes.resolve_workers("auto", "cpu", pending=10) == 1  # measured: no gain on 2 cores
    assert processes.resolve_workers(3, "cpu", pending=10) == 3
    assert processes.resolve_workers(3, "cpu", pending=2) == 2  # never more workers than trials
    assert processes.resolve_workers(3, "cpu", pending=1) == 1


def test_auto_workers_is_one_on_a_gpu_until_a_measurement_says_more_is_faster(monkeypatch):
    from muffin_lib.training import runtime

    monkeypatch.setattr(runtime, "resolve_device", lambda device: torch.device("cuda", 0))
    assert processes.resolve_workers("auto", "cuda", pending=10) == 1
    assert processes.resolve_workers(4, "cuda", pending=10) == 4
    assert processes.resolve_workers("auto", "mps", pending=10) == 1


def test_each_trial_is_reported_when_it_ends_not_when_the_batch_does(tiny_cv_data, tmp_path, one_thread):
    """A short and a long trial on two workers: the short one is stored while the long one still trains."""
    cache, folds = tiny_cv_data
    arrivals = {}

    def on_trial(record):
        arrivals[record["config"]["epochs"]] = time.perf_counter()

    store = TrialStore(tmp_path / "t.sqlite")
    options = RunOptions(store=store, device="cpu", progress=False, workers=2, on_trial=on_trial)
    grid_search(TINY, {"epochs": [1, 80]}, cache, folds[:1], options=options)
    assert arrivals[80] - arrivals[1] > 0.4  # 79 more epochs: about a second here; 0 if reported at the end
    assert len(store) == 2


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "many"])
def test_a_bad_workers_value_is_a_clear_error(workers):
    with pytest.raises(MuffinError, match="workers must be a number >= 1 or 'auto'"):
        RunOptions(workers=workers)


def test_interrupting_ends_the_workers_and_keeps_what_finished(tiny_cv_data, tmp_path, one_thread):
    """A notebook's stop button (KeyboardInterrupt) while trials train: no worker trains on."""
    import multiprocessing

    cache, folds = tiny_cv_data
    store = TrialStore(tmp_path / "t.sqlite")

    def stop_after_the_first(record):
        if record["status"] == "trained":
            raise KeyboardInterrupt

    options = RunOptions(store=store, device="cpu", progress=False, workers=2, on_trial=stop_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        grid_search(TINY, {"epochs": [1, 4000]}, cache, folds[:1], options=options)
    deadline = time.monotonic() + 10  # the 4,000-epoch trial would train on for minutes
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not multiprocessing.active_children()
    assert [record["config"]["epochs"] for record in store.records()] == [1]


def test_cross_validate_each_queues_every_fold_of_every_configuration_at_once(tiny_cv_data, monkeypatch):
    from muffin_lib.selection import cross_validate, cross_validate_each
    from muffin_lib.selection import cv as cv_module

    cache, folds = tiny_cv_data
    batches = []
    real_run_tasks = cv_module.run_tasks

    def counting(tasks, caches, options):
        batches.append(len(tasks))
        return real_run_tasks(tasks, caches, options)

    monkeypatch.setattr(cv_module, "run_tasks", counting)
    configs = {"fast": TINY, "slow": TINY.replace(lr=1e-3)}
    each = cross_validate_each(configs, cache, folds, options=RunOptions(device="cpu", progress=False))
    assert batches == [2 * len(folds)]  # one batch: the workers are never idle between configurations
    for name, config in configs.items():
        alone = cross_validate(config, cache, folds, options=RunOptions(device="cpu", progress=False))
        assert each[name].config_key == alone.config_key and each[name].losses == alone.losses
