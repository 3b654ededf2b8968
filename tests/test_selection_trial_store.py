"""The SQLite trial store: one row per (configuration, fold, scope), atomic, clear errors on bad files."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from muffin_lib.data import imageio
from muffin_lib.data.cache import load_images
from muffin_lib.errors import MuffinError
from muffin_lib.selection import RunOptions, cross_validate
from muffin_lib.selection.trial_store import TrialStore, fold_plan_key, trial_key
from muffin_lib.training import recipe, runtime


def _add(store, key="k1", fold=0, scope="cv", loss=0.25):
    metrics = {"zero_one_loss": loss, "val_accuracy": 1 - loss, "history": [{"epoch": 1, "loss": 0.7}]}
    return store.add_record({"config_key": key, "fold": fold, "scope": scope, "metrics": metrics, "seed": 7,
                             "config": {"model": "simple_cnn", "lr": 1e-3}, "n_train": 80, "n_test": 20,
                             "seconds": 1.5, "device": "cpu", "fingerprint": "fp", "plan_key": "plan"})


def test_round_trip_and_no_duplicates(tmp_path):
    store = TrialStore(tmp_path / "trials.sqlite")
    assert _add(store) is True
    assert _add(store, loss=0.9) is False  # a re-run of the same trial changes nothing
    _add(store, fold=1, loss=0.5)
    _add(store, fold=0, scope="test", loss=0.1)
    assert len(store) == 3

    record = store.get("k1", 0, "cv")
    assert record["zero_one_loss"] == 0.25 and record["metrics"]["zero_one_loss"] == 0.25
    assert record["config"] == {"model": "simple_cnn", "lr": 1e-3}
    assert record["metrics"]["history"] == [{"epoch": 1, "loss": 0.7}]
    assert record["n_train"] == 80 and record["n_test"] == 20 and record["seed"] == 7
    assert record["device"] == "cpu" and record["host"] and record["created_at"]
    assert store.get("k1", 5, "cv") is None

    assert store.completed(scope="cv") == {("k1", 0, "cv"), ("k1", 1, "cv")}
    assert store.completed() == {("k1", 0, "cv"), ("k1", 1, "cv"), ("k1", 0, "test")}
    assert [r["fold"] for r in store.records(scope="cv")] == [0, 1]

    frame = store.to_frame(scope="cv")
    assert list(frame["zero_one_loss"]) == [0.25, 0.5]
    assert {"config_key", "fold", "scope", "config", "metrics", "seconds"} <= set(frame.columns)

    reopened = TrialStore(tmp_path / "trials.sqlite")
    assert len(reopened) == 3
    with sqlite3.connect(tmp_path / "trials.sqlite") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_key_changes_with_config_data_and_folds():
    folds = [(np.array([0, 1, 2]), np.array([3, 4])), (np.array([2, 3, 4]), np.array([0, 1]))]
    other_folds = [(np.array([0, 1, 3]), np.array([2, 4])), (np.array([2, 3, 4]), np.array([0, 1]))]
    run = {"execution": "cpu/fp32"}
    base = trial_key("cfg-a", "fp-1", fold_plan_key(folds), **run)
    assert base == trial_key("cfg-a", "fp-1", fold_plan_key([(list(a), list(b)) for a, b in folds]), **run)
    assert base != trial_key("cfg-b", "fp-1", fold_plan_key(folds), **run)
    assert base != trial_key("cfg-a", "fp-2", fold_plan_key(folds), **run)
    assert base != trial_key("cfg-a", "fp-1", fold_plan_key(other_folds), **run)
    assert base != trial_key("cfg-a", "fp-1", fold_plan_key(folds[:1]), **run)


def test_key_changes_with_execution_code_and_preprocessing(monkeypatch):
    plan = fold_plan_key([(np.array([0, 1, 2]), np.array([3, 4]))])
    base = trial_key("cfg-a", "fp-1", plan, execution="cpu/fp32")
    assert base == trial_key("cfg-a", "fp-1", plan, execution="cpu/fp32")
    keys = {base}
    for execution in ("cpu/bf16", "cuda/fp32", "cuda/bf16", "cuda/fp16", "mps/fp32"):
        keys.add(trial_key("cfg-a", "fp-1", plan, execution=execution))
    assert len(keys) == 6
    with pytest.raises(TypeError):
        trial_key("cfg-a", "fp-1", plan)  # execution must be given, by keyword
    with pytest.raises(TypeError):
        trial_key("cfg-a", "fp-1", plan, "cpu/fp32")

    monkeypatch.setattr(recipe, "CODE_VERSION", recipe.CODE_VERSION + 1)
    new_code = trial_key("cfg-a", "fp-1", plan, execution="cpu/fp32")
    assert new_code != base
    monkeypatch.setattr(imageio, "PREPROCESS_VERSION", imageio.PREPROCESS_VERSION + 1)
    new_preprocessing = trial_key("cfg-a", "fp-1", plan, execution="cpu/fp32")
    assert new_preprocessing not in (base, new_code)
    monkeypatch.undo()
    assert trial_key("cfg-a", "fp-1", plan, execution="cpu/fp32") == base


def test_execution_key_names_device_type_and_precision(monkeypatch):

    assert recipe.CODE_VERSION == 2
    assert runtime.execution_key("off", "cpu") == "cpu/fp32"
    monkeypatch.delenv("MUFFIN_CPU_BF16", raising=False)  # the hardware rule, not conftest's pin
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2", "fma"}))  # a Zen 3: no bf16 hardware
    assert runtime.execution_key("auto", "cpu") == "cpu/fp32"
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16", "amx_tile"}))
    assert runtime.execution_key("auto", "cpu") == "cpu/bf16"  # no workload: the instructions decide
    assert runtime.execution_key("bf16", "cpu") == "cpu/bf16"
    assert runtime.execution_key("off", torch.device("cpu")) == "cpu/fp32"
    with pytest.raises(MuffinError, match="fp16"):
        runtime.execution_key("fp16", "cpu")
    if torch.cuda.is_available():
        assert runtime.execution_key("off", "cuda") == "cuda/fp32"
        assert runtime.execution_key("fp16", "cuda:0") == "cuda/fp16"
        auto = "cuda/bf16" if torch.cuda.is_bf16_supported() else "cuda/fp16"
        assert runtime.execution_key("auto", "cuda") == auto


def test_cross_validate_trains_again_after_a_code_version_bump(synthetic_data_dir, tmp_path, monkeypatch):
    config = recipe.TrainConfig(model="simple_cnn", image_size=32, color_mode="grayscale", epochs=1,
                                batch_size=16, amp="off")
    cache = load_images(synthetic_data_dir, tmp_path, "train", 32, "grayscale", progress=False)
    order = np.random.default_rng(0).permutation(len(cache.labels))
    folds = [(np.sort(order[32:]), np.sort(order[:32])), (np.sort(order[:32]), np.sort(order[32:]))]
    store = TrialStore(tmp_path / "trials.sqlite")

    def run():
        seen = []
        options = RunOptions(store=store, device="cpu", progress=False, on_trial=seen.append)
        result = cross_validate(config, cache, folds, options=options)
        return result, [record["status"] for record in seen]

    first, statuses = run()
    assert statuses == ["trained", "trained"]
    assert all(t["execution"] == "cpu/fp32" for t in first.trials)
    again, statuses = run()
    assert statuses == ["stored", "stored"] and again.config_key == first.config_key
    # Kept in the store (no column of its own): stored records say how they were run too.
    assert [t["execution"] for t in again.trials] == ["cpu/fp32", "cpu/fp32"]
    assert all(r["metrics"]["execution"] == "cpu/fp32" for r in store.records())

    monkeypatch.setattr(recipe, "CODE_VERSION", recipe.CODE_VERSION + 1)
    bumped, statuses = run()
    assert statuses == ["trained", "trained"] and bumped.config_key != first.config_key
    assert len(store) == 4


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "trials.sqlite"
    path.write_bytes(b"this is not a database at all, just some bytes " * 100)
    with pytest.raises(MuffinError) as error:
        TrialStore(path)
    assert str(path) in str(error.value) and "Move it away" in str(error.value)


def test_foreign_table_is_a_clear_error(tmp_path):
    path = tmp_path / "trials.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE trials (name TEXT)")
    with pytest.raises(MuffinError, match="Move it away"):
        TrialStore(path)
    with pytest.raises(MuffinError, match="directory"):
        TrialStore(tmp_path)


@pytest.mark.slow  # kills writer processes: 7 s
def test_kill_during_writes_leaves_only_whole_rows(tmp_path):
    path = tmp_path / "trials.sqlite"
    writer = textwrap.dedent(
        f"""
        from muffin_lib.selection.trial_store import TrialStore
        store = TrialStore({str(path)!r})
        for fold in range(100000):
            store.add_record({{"config_key": "k", "fold": fold, "scope": "cv", "config": {{"lr": 0.1}},
                              "metrics": {{"zero_one_loss": 0.5, "history": [0.1] * 500}}}})
        """
    )
    process = subprocess.Popen([sys.executable, "-c", writer])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.exists():
            try:
                if len(TrialStore(path)) >= 20:
                    break
            except MuffinError:
                pass
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    store = TrialStore(path)
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    records = store.records()
    assert len(records) >= 20
    assert all(r["metrics"]["zero_one_loss"] == 0.5 and len(r["metrics"]["history"]) == 500 for r in records)
    assert sorted(r["fold"] for r in records) == list(range(len(records)))


def test_a_trial_run_otherwise_than_its_key_is_not_stored(synthetic_data_dir, tmp_path):
    """A worker that resolves the device otherwise than the driver (Ray without GPUs) must not store it."""
    from muffin_lib.selection import TrialTask, run_task

    config = recipe.TrainConfig(model="simple_cnn", image_size=32, color_mode="grayscale", epochs=1,
                                batch_size=16, amp="off")
    cache = load_images(synthetic_data_dir, tmp_path, "train", 32, "grayscale", progress=False)
    train_idx, test_idx = np.arange(0, 48), np.arange(48, 64)
    plan = fold_plan_key([(train_idx, test_idx)])
    task = TrialTask(
        config=config, setting=(32, "grayscale"), fold=0, train_idx=train_idx, test_idx=test_idx,
        config_key=trial_key(config.key(), cache.fingerprint, plan, execution="cuda/bf16"), scope="cv",
        plan_key=plan, fingerprint=cache.fingerprint, seed=0, execution="cuda/bf16",
    )
    with pytest.raises(MuffinError, match="keyed for cuda/bf16 but trained as cpu/fp32"):
        run_task(task, cache.images, cache.labels, device="cpu")


def test_key_functions_give_the_keys_stores_on_disk_hold(monkeypatch):
    """Trial stores already on disk are reused only while keys are computed as before. These values were
    computed by the code that filled them (before the selection package was reorganised, issue 17)."""
    monkeypatch.setattr(recipe, "CODE_VERSION", 7)
    monkeypatch.setattr(imageio, "PREPROCESS_VERSION", 3)
    folds = [(np.array([0, 1, 2]), np.array([3, 4])), (np.array([3, 4]), np.array([0, 1, 2]))]
    assert fold_plan_key(folds) == "b69ac5570cf09a49"
    assert trial_key("abc123", "fp", "plan", execution="cpu/fp32") == "6786f0e87a5e51e55a8f"
    assert trial_key("abc123", None, "plan", execution="cuda/bf16") == "2f287f390f173babbc43"


def test_cv_grid_and_nested_cv_key_their_trials_as_before(monkeypatch, tmp_path):
    """Every trial of cross_validate, grid_search (with a rung) and nested_cv is keyed by trial_key of its
    configuration, the cache's fingerprint, its fold plan and execution, under the scopes stores hold
    (cv, nested-inner, nested-outer). Nothing is trained: run_task is replaced by a stand-in."""
    from types import SimpleNamespace

    from muffin_lib.selection import NestedFolds, execute, grid_search, nested_cv, stratified_folds
    from muffin_lib.selection.trial import trial_record

    def stand_in(task, images, labels, *, device="auto", progress=False):
        metrics = {"zero_one_loss": task.fold / 10, "loss": 0.0, "accuracy": 1.0, "n": 1, "errors": 0,
                   "history": []}
        return trial_record(task, {"metrics": metrics, "seed": task.seed, "n_train": len(task.train_idx),
                                   "n_test": len(task.test_idx), "seconds": 0.0, "device": "cpu",
                                   "execution": task.execution})

    monkeypatch.setattr(execute, "run_task", stand_in)
    n = 24
    cache = SimpleNamespace(images=torch.zeros(n, 1, 32, 32, dtype=torch.uint8),
                            labels=torch.tensor([0, 1] * (n // 2)), relpaths=[f"{i}.jpg" for i in range(n)],
                            fingerprint="fp-abc")
    groups = np.arange(n) // 2
    folds = stratified_folds(cache.labels.numpy(), 3, 0, groups=groups)
    config = recipe.TrainConfig(model="simple_cnn", image_size=32, color_mode="grayscale", epochs=2,
                                amp="off")
    store = TrialStore(tmp_path / "trials.sqlite")
    options = RunOptions(store=store, device="cpu", progress=False)
    result = cross_validate(config, cache, folds, groups=groups, options=options)
    assert result.config_key == trial_key(config.key(), "fp-abc", fold_plan_key(folds), execution="cpu/fp32")
    grid_search(config, {"lr": [1e-3, 3e-3, 1e-2]}, cache, folds, groups=groups, rung_epochs=(1,),
                options=options)
    nested_cv(config, {"lr": [1e-3, 3e-3]}, cache, NestedFolds(2, 2), groups=groups, options=options)
    records = store.records()
    assert {r["scope"] for r in records} == {"cv", "nested-inner", "nested-outer"}
    for record in records:
        key = recipe.TrainConfig.from_dict(record["config"]).key()
        assert record["config_key"] == trial_key(key, "fp-abc", record["plan_key"], execution="cpu/fp32")
        assert record["fingerprint"] == "fp-abc" and record["execution"] == "cpu/fp32"
    assert {r["plan_key"] for r in records if r["scope"] == "cv"} == {fold_plan_key(folds)}
