"""Cross-validation, grid search and nested CV on tiny synthetic data: what is trained on what, resumes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from muffin_lib.cli import main as cli_main
from muffin_lib.data.cache import load_images
from muffin_lib.data.splits import plan_for_cache
from muffin_lib.errors import MuffinError
from muffin_lib.selection import (
    NestedFolds,
    RunOptions,
    compare_configs,
    cross_validate,
    grid_search,
    nested_cv,
    stratified_folds,
)
from muffin_lib.selection.stats import summarize_losses
from muffin_lib.selection.trial_store import TrialStore, fold_plan_key, trial_key
from muffin_lib.training import augment, loop, recipe, tensors

REPO = Path(__file__).resolve().parents[1]
TINY = recipe.TrainConfig(model="simple_cnn", image_size=32, color_mode="grayscale", epochs=1, batch_size=16,
                          lr=3e-3, augment="flip_rotate")
CPU = RunOptions(device="cpu", progress=False)  # quietly on the CPU; .replace(store=...) adds a store


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("selection-work")


@pytest.fixture(scope="module")
def cache(synthetic_data_dir, work_dir):
    return load_images(synthetic_data_dir, work_dir, "train", 32, "grayscale", progress=False)


@pytest.fixture(scope="module")
def test_cache(synthetic_data_dir, work_dir):
    return load_images(synthetic_data_dir, work_dir, "test", 32, "grayscale", progress=False)


@pytest.fixture(scope="module")
def folds(cache, work_dir):
    return plan_for_cache(cache, work_dir, n_splits=3, seed=0).folds


class FitCounter:
    """Wraps loop.fit: counts calls, keeps what each call was given, can interrupt on the N-th call."""

    def __init__(self, interrupt_on: int | None = None):
        self.calls: list[dict] = []
        self.interrupt_on = interrupt_on
        self._fit = loop.fit

    def __call__(self, config, train, val=None, **kwargs):
        self.calls.append({"config": config, "train": train[0].clone(),
                           "val": None if val is None else val[0]})
        if self.interrupt_on is not None and len(self.calls) == self.interrupt_on:
            raise KeyboardInterrupt
        result = self._fit(config, train, val, **kwargs)
        self.calls[-1]["normalization"] = result.normalization
        return result


def _standardized(images: torch.Tensor) -> torch.Tensor:
    """Per-image standardised pixels: equal for an image before and after the engine's normalisation."""
    flat = images.detach().to("cpu", torch.float64).reshape(len(images), -1)
    flat = flat - flat.mean(dim=1, keepdim=True)
    return flat / flat.norm(dim=1, keepdim=True)


def _matches(batch: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """For each image of ``batch``: does it equal (up to an affine pixel map) any image of ``reference``?"""
    similarity = _standardized(batch) @ _standardized(reference).T
    return (similarity > 1 - 1e-6).any(dim=1)


def _hashes(images: torch.Tensor) -> set[str]:
    return {hashlib.sha256(image.numpy().tobytes()).hexdigest() for image in images}


def test_folds_are_disjoint_stratified_and_cover_the_training_split(cache, test_cache, folds):
    n = len(cache.labels)
    labels = np.asarray(cache.labels)
    held_out = np.concatenate([test for _, test in folds])
    assert sorted(held_out.tolist()) == list(range(n))  # every training image held out exactly once
    for train_idx, test_idx in folds:
        assert np.intersect1d(train_idx, test_idx).size == 0
        assert sorted(np.concatenate([train_idx, test_idx]).tolist()) == list(range(n))
        expected = np.bincount(labels) * len(test_idx) / n
        assert np.all(np.abs(np.bincount(labels[test_idx], minlength=2) - expected) <= 1)
    # No test-split file, by name or by content, is among the images the folds index.
    assert all(path.startswith("train/") for path in cache.relpaths)
    assert not _hashes(cache.images) & _hashes(test_cache.images)


def test_held_out_fold_is_never_augmented_or_used_for_training(cache, folds, monkeypatch):
    counter = FitCounter()
    augmented: list[list[torch.Tensor]] = []
    real_augment = augment.augment_batch

    def recording_augment(x, **kwargs):
        augmented[-1].append(x.detach().clone())
        return real_augment(x, **kwargs)

    def fit_with_new_record(*args, **kwargs):
        augmented.append([])
        return counter(*args, **kwargs)

    evaluated: list[torch.Tensor] = []
    real_evaluate = loop.evaluate

    def recording_evaluate(model, images, labels, normalization, **kwargs):
        evaluated.append(images.clone())
        return real_evaluate(model, images, labels, normalization, **kwargs)

    monkeypatch.setattr(augment, "augment_batch", recording_augment)
    monkeypatch.setattr(loop, "fit", fit_with_new_record)
    monkeypatch.setattr(loop, "evaluate", recording_evaluate)
    result = cross_validate(TINY, cache, folds, options=CPU)

    assert len(counter.calls) == len(folds) == len(evaluated) == len(augmented)
    for (train_idx, test_idx), call, batches, scored in zip(folds, counter.calls, augmented, evaluated,
                                                             strict=True):
        train_images, held_out = cache.images[train_idx], cache.images[test_idx]
        assert torch.equal(call["train"], train_images) and call["val"] is None
        assert torch.equal(scored, held_out)
        seen = torch.cat(batches)
        assert len(seen) >= len(train_idx)
        assert _matches(seen, train_images).all()  # control: the recorder does recognise images
        assert not _matches(seen, held_out).any()
        # Normalisation statistics come from the training folds only.
        assert call["normalization"] == tensors.compute_normalization(train_images)
    # The interval is the corrected one (folds share training images): n_test / n_train of these folds.
    ratio = np.mean([len(test) for _, test in folds]) / np.mean([len(train) for train, _ in folds])
    assert result.summary == summarize_losses(result.losses, test_train_ratio=ratio)
    assert result.summary["interval"].startswith("corrected")
    assert [t["fold"] for t in result.trials] == [0, 1, 2]
    assert all(t["n_train"] + t["n_test"] == len(cache.labels) for t in result.trials)
    assert all(0.0 <= loss <= 1.0 for loss in result.losses)


def test_early_stopping_split_comes_from_the_training_folds(cache, folds, monkeypatch):
    counter = FitCounter()
    monkeypatch.setattr(loop, "fit", counter)
    config = TINY.replace(epochs=2, early_stopping_patience=1)
    cross_validate(config, cache, folds, options=CPU)
    for (train_idx, test_idx), call in zip(folds, counter.calls, strict=True):
        assert call["val"] is not None
        assert len(call["train"]) + len(call["val"]) == len(train_idx)
        train_hashes = _hashes(cache.images[train_idx])
        assert _hashes(call["val"]) <= train_hashes and _hashes(call["train"]) <= train_hashes
        assert not _hashes(call["val"]) & _hashes(call["train"])
        assert not (_hashes(call["val"]) | _hashes(call["train"])) & _hashes(cache.images[test_idx])


def test_early_stopping_split_keeps_twin_groups_on_one_side(caplog):
    import logging

    from muffin_lib.selection.trial import EARLY_STOPPING_FRACTION, _early_stopping_split

    labels = torch.tensor([0] * 60 + [1] * 60)
    train_idx = np.arange(0, 120, 1)[::-1].copy()  # any order of cache indices
    groups = train_idx // 3  # twin groups of three, aligned with train_idx
    fit, stop = _early_stopping_split(train_idx, labels, seed=7, groups=groups)
    assert sorted([*fit, *stop]) == sorted(train_idx)
    group_of = dict(zip(train_idx.tolist(), groups.tolist(), strict=True))
    assert not {group_of[i] for i in fit} & {group_of[i] for i in stop}
    assert abs(len(stop) - EARLY_STOPPING_FRACTION * len(train_idx)) <= 6
    assert abs(labels[stop].float().mean().item() - 0.5) < 0.15
    with caplog.at_level(logging.WARNING, logger="muffin_lib.selection.trial"):
        _early_stopping_split(train_idx, labels, seed=7)
    assert "no twin groups" in caplog.text


def test_cross_validate_passes_twin_groups_to_early_stopping(cache, folds, monkeypatch):
    counter = FitCounter()
    monkeypatch.setattr(loop, "fit", counter)
    groups = np.arange(len(cache.labels)) // 4  # neighbours in record order as twin groups of four
    by_hash = {hashlib.sha256(image.numpy().tobytes()).hexdigest(): i for i, image in enumerate(cache.images)}
    assert len(by_hash) == len(cache.labels)
    config = TINY.replace(epochs=1, early_stopping_patience=1)
    cross_validate(config, cache, folds, groups=groups, options=CPU)
    for call in counter.calls:
        fit_groups = {groups[by_hash[h]] for h in _hashes(call["train"])}
        stop_groups = {groups[by_hash[h]] for h in _hashes(call["val"])}
        assert stop_groups and not fit_groups & stop_groups


def test_interrupted_grid_resumes_without_retraining(cache, folds, tmp_path, monkeypatch):
    store = TrialStore(tmp_path / "trials.sqlite")
    grid = {"lr": [3e-3, 1e-3]}
    monkeypatch.setattr(loop, "fit", FitCounter(interrupt_on=4))
    with pytest.raises(KeyboardInterrupt):
        grid_search(TINY, grid, cache, folds, options=CPU.replace(store=store))
    assert len(store) == 3  # the three finished trials were committed

    counter = FitCounter()
    monkeypatch.setattr(loop, "fit", counter)
    result = grid_search(TINY, grid, cache, folds, options=CPU.replace(store=store))
    assert len(counter.calls) == 3  # only the unfinished trials were trained
    rows = store.records(scope="cv")
    assert len(rows) == 6 and len({(r["config_key"], r["fold"]) for r in rows}) == 6
    assert [t["status"] for t in result.trials] == ["stored"] * 3 + ["trained"] * 3

    again = FitCounter()
    monkeypatch.setattr(loop, "fit", again)
    rerun = grid_search(TINY, grid, cache, folds, options=CPU.replace(store=store))
    assert again.calls == [] and len(store) == 6
    assert rerun.table["mean"].tolist() == result.table["mean"].tolist()


def test_grid_table_best_heatmap_and_comparison(synthetic_data_dir, work_dir, cache, folds, tmp_path):
    store = TrialStore(tmp_path / "trials.sqlite")
    grid = {"lr": [3e-3, 1e-3], "image_size": [32, 40]}
    options = CPU.replace(store=store, data_dir=synthetic_data_dir, work_dir=work_dir)
    result = grid_search(TINY, grid, cache, folds, options=options)
    table = result.table
    assert len(table) == 4 and len(result.trials) == 12
    assert {"lr", "image_size", "mean", "std", "se", "ci_low", "ci_high", "seconds"} <= set(table.columns)
    assert table["mean"].min() == result.best_result.summary["mean"]
    assert result.best.key() == result.best_result.config.key()
    assert all(r.plan_key == fold_plan_key(folds) for r in result.results)  # one fold plan for all
    heatmap = result.heatmap("lr", "image_size")
    assert heatmap.shape == (2, 2)
    assert heatmap.loc[1e-3, 40] == table.query("lr == 1e-3 and image_size == 40")["mean"].item()

    a, b = result.results[0], result.results[1]
    comparison = compare_configs(a.config, b.config, a, b)
    assert 0.0 <= comparison["p_value"] <= 1.0
    assert comparison["mean_diff"] == pytest.approx(a.summary["mean"] - b.summary["mean"])
    other = cross_validate(a.config, cache, folds[:2], options=CPU)
    with pytest.raises(MuffinError, match="same folds"):
        compare_configs(a.config, b.config, other, b)
    with pytest.raises(MuffinError, match="not TrainConfig fields"):
        grid_search(TINY, {"learning_rate": [0.1]}, cache, folds)
    with pytest.raises(MuffinError, match="cache_for"):
        grid_search(TINY, {"image_size": [40]}, cache, folds)


def test_successive_halving_keeps_the_best_share_and_scores_whole_schedules(cache, folds, tmp_path,
                                                                            monkeypatch):
    store = TrialStore(tmp_path / "trials.sqlite")
    counter = FitCounter()
    monkeypatch.setattr(loop, "fit", counter)
    base = TINY.replace(epochs=2)
    result = grid_search(base, {"lr": [1e-2, 3e-3, 1e-3]}, cache, folds, rung_epochs=(1,),
                         options=CPU.replace(store=store))
    k = len(folds)
    assert len(counter.calls) == 3 * k + 1 * k  # every configuration at 1 epoch, the best third at 2
    assert [call["config"].epochs for call in counter.calls] == [1] * 3 * k + [2] * k
    first, last = result.rungs
    assert len(first) == 3 and len(last) == 1 and result.results == last
    survivor = min(first, key=lambda r: r.summary["mean"]).config
    assert last[0].config == survivor.replace(epochs=2) and result.best == last[0].config
    assert result.table["rung"].tolist() == [0, 0, 0, 1] and result.table["epochs"].tolist() == [1, 1, 1, 2]
    assert result.heatmap("lr", "epochs").shape == (3, 1)  # rung 0: every configuration
    with pytest.raises(MuffinError, match="rung_epochs must increase"):
        grid_search(base, {"lr": [1e-3]}, cache, folds, rung_epochs=(2,))


def test_a_trial_shared_by_the_grid_and_the_per_architecture_cv_is_trained_once(cache, folds, tmp_path,
                                                                                 monkeypatch):
    # Notebook 06's grid and notebook 07's cross-validation of the same configuration on the same folds
    # are the same trials: 07 finds them in the store.
    store = TrialStore(tmp_path / "trials.sqlite")
    grid = grid_search(TINY, {"lr": [3e-3, 1e-3]}, cache, folds, options=CPU.replace(store=store))
    counter = FitCounter()
    monkeypatch.setattr(loop, "fit", counter)
    again = cross_validate(TINY.replace(lr=1e-3), cache, folds, options=CPU.replace(store=store))
    assert counter.calls == []
    assert [t["status"] for t in again.trials] == ["stored"] * len(folds)
    assert again.losses == grid.results[1].losses


def test_folds_trained_by_hand_are_the_library_trials_and_are_not_trained_again(cache, folds, tmp_path,
                                                                                monkeypatch):
    # Notebook 07's written-out fold loop: loop.fit + loop.evaluate per task, stored with store_fold.
    # cross_validate must then reuse them (no training), and their losses must be what cross_validate
    # itself would have trained.
    from muffin_lib.selection import cv_tasks, store_fold

    by_library = cross_validate(TINY, cache, folds, options=CPU)
    store = TrialStore(tmp_path / "trials.sqlite")
    for task in cv_tasks(TINY, cache, folds, scope="cv", device="cpu"):
        fit_part = (cache.images[task.train_idx], cache.labels[task.train_idx])
        fitted = loop.fit(task.config.replace(seed=task.seed), fit_part, device="cpu", progress=False,
                          num_classes=len(cache.class_names))
        held_out = loop.evaluate(fitted.model, cache.images[task.test_idx], cache.labels[task.test_idx],
                                   fitted.normalization, device=fitted.device, flip_tta=True)
        store_fold(store, task, fitted, held_out, seconds=1.0)
    counter = FitCounter()
    monkeypatch.setattr(loop, "fit", counter)
    reused = cross_validate(TINY, cache, folds, options=CPU.replace(store=store))
    assert counter.calls == []
    assert [t["status"] for t in reused.trials] == ["stored"] * len(folds)
    assert reused.losses == by_library.losses
    assert reused.summary == by_library.summary
    flips = [[t["metrics"]["flip_tta_errors"] for t in result.trials] for result in (reused, by_library)]
    assert flips[0] == flips[1]
    # a model trained with another seed than its fold's is refused, not stored under the fold's key
    monkeypatch.undo()
    task = cv_tasks(TINY, cache, folds, scope="cv", device="cpu")[0]
    fit_part = (cache.images[task.train_idx], cache.labels[task.train_idx])
    fitted = loop.fit(TINY, fit_part, device="cpu", progress=False)
    with pytest.raises(MuffinError, match="seed"):
        scores = {"n": 1, "zero_one_loss": 0.0, "loss": 0.0}
        store_fold(TrialStore(tmp_path / "other.sqlite"), task, fitted, scores, seconds=1.0)
    # and scores without the flip comparison are refused: the record would differ from cross_validate's
    own = loop.fit(task.config.replace(seed=task.seed), fit_part, device="cpu", progress=False)
    plain = loop.evaluate(own.model, cache.images[task.test_idx], cache.labels[task.test_idx],
                          own.normalization)
    with pytest.raises(MuffinError, match="flip_tta=True"):
        store_fold(TrialStore(tmp_path / "other.sqlite"), task, own, plain, seconds=1.0)


def test_trial_key_changes_with_config_data_and_folds(cache, folds):
    plan = fold_plan_key(folds)
    run = {"execution": "cpu/fp32"}
    key = trial_key(TINY.key(), cache.fingerprint, plan, **run)
    assert key != trial_key(TINY.replace(lr=1e-4).key(), cache.fingerprint, plan, **run)
    assert key != trial_key(TINY.replace(epochs=2).key(), cache.fingerprint, plan, **run)
    assert key != trial_key(TINY.key(), "another-dataset", plan, **run)
    assert key != trial_key(TINY.key(), cache.fingerprint, fold_plan_key(folds[::-1]), **run)


def test_nested_cv_is_stored_and_resumed(cache, test_cache, tmp_path, monkeypatch):
    store = TrialStore(tmp_path / "trials.sqlite")
    nested = nested_cv(TINY, {"lr": [3e-3, 1e-3]}, cache, NestedFolds(2, 2, seed=0),
                       options=CPU.replace(store=store))
    assert len(nested.outer_losses) == 2 and nested.summary["n"] == 2
    assert [row["outer_fold"] for row in nested.chosen] == [0, 1]
    assert all(row["lr"] in (3e-3, 1e-3) for row in nested.chosen)
    scopes = [r["scope"] for r in store.records()]
    assert scopes.count("nested-inner") == 2 * 2 * 2 and scopes.count("nested-outer") == 2
    for inner, row in zip(nested.inner, nested.chosen, strict=True):
        assert inner.best_result.summary["mean"] == row["inner_mean"] == inner.table["mean"].min()

    counter = FitCounter()
    monkeypatch.setattr(loop, "fit", counter)
    again = nested_cv(TINY, {"lr": [3e-3, 1e-3]}, cache, NestedFolds(2, 2, seed=0),
                      options=CPU.replace(store=store))
    assert counter.calls == [] and again.outer_losses == nested.outer_losses  # all from the store


def test_cv_cli_reports_a_clear_error_for_a_corrupt_store(synthetic_data_dir, tmp_path, capsys):
    (tmp_path / "trials.sqlite").write_bytes(b"definitely not sqlite " * 64)
    code = cli_main(["cv", "--data-dir", str(synthetic_data_dir), "--work-dir", str(tmp_path),
                     "--image-size", "32"])
    error = capsys.readouterr().err
    assert code == 2 and "trials.sqlite" in error and "Move it away" in error


def _cv_cli(data_dir: Path, work_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "muffin_lib", "cv", "--data-dir", str(data_dir), "--work-dir", str(work_dir),
        "--model", "simple_cnn", "--image-size", "32", "--lr", "3e-3,1e-3", "--batch-size", "8,16",
        "--epochs", "2", "--folds", "3", "--device", "cpu", "--quiet",
    ]  # fmt: skip


@pytest.mark.slow  # subprocesses, a kill and a rerun
def test_cv_cli_resumes_after_kill_9(synthetic_data_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MUFFIN_PROGRESS": "off"}
    command = _cv_cli(synthetic_data_dir, tmp_path)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "trials.sqlite"
    deadline = time.monotonic() + 120
    stored_at_kill = 0
    while time.monotonic() < deadline and process.poll() is None:
        if db.exists():
            try:
                stored_at_kill = len(TrialStore(db))
            except MuffinError:
                stored_at_kill = 0
            if stored_at_kill >= 2:
                break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    stored_at_kill = len(TrialStore(db))
    assert 2 <= stored_at_kill < 12, "the run should have been killed in the middle"

    finished = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    outcome = json.loads(finished.stdout.strip().splitlines()[-1])
    trials = outcome["trials"]
    assert len(trials) == 12 and len({(t["config_key"], t["fold"]) for t in trials}) == 12
    assert sum(t["status"] == "stored" for t in trials) == stored_at_kill  # not trained again
    assert all(0.0 <= t["zero_one_loss"] <= 1.0 for t in trials)
    assert len(outcome["table"]) == 4
    assert {"mean", "std", "se", "ci_low", "ci_high"} <= set(outcome["table"][0])
    assert outcome["best"]["lr"] in (3e-3, 1e-3)
    assert len(TrialStore(db)) == 12


@pytest.mark.slow
@pytest.mark.realdata
def test_cross_validation_on_real_images(shared_data, tmp_path):
    cache = load_images(shared_data / "muffin-chihuahua-dev", tmp_path, "train", 32, "grayscale",
                        progress=False)
    plan = plan_for_cache(cache, tmp_path, n_splits=3, seed=0)
    result = cross_validate(TINY.replace(epochs=3, batch_size=32), cache, plan.folds, options=CPU)
    # Better than always answering the majority class (0.46 error) on real photos.
    assert result.summary["mean"] < 0.40


def test_nested_cv_reuses_the_grid_trial_that_is_its_outer_refit(cache, tmp_path):
    # On the study's folds, refitting the inner winner on an outer-training part is exactly the grid's CV
    # trial of that configuration on that fold: it is read from the store, not trained again.
    store = TrialStore(tmp_path / "trials.sqlite")
    folds = stratified_folds(cache.labels.numpy(), 2, seed=0)
    grid = {"lr": [3e-3]}
    searched = grid_search(TINY, grid, cache, folds, options=CPU.replace(store=store))
    statuses = []
    report = CPU.replace(store=store,
                         on_trial=lambda record: statuses.append((record["scope"], record["status"])))
    nested = nested_cv(TINY, grid, cache, NestedFolds(folds, 2, seed=0), options=report)
    outer = [status for scope, status in statuses if scope == "cv"]
    assert outer == ["stored", "stored"]  # both outer refits came from the grid's trials
    assert nested.outer_losses == searched.best_result.losses
    assert [r["scope"] for r in store.records()].count("nested-outer") == 0
