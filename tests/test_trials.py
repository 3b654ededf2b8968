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

from muffin_lib.errors import MuffinError
from muffin_lib.trials import TrialStore, fold_plan_key, trial_key


def _add(store, key="k1", fold=0, scope="cv", loss=0.25):
    return store.add(
        config_key=key,
        fold=fold,
        scope=scope,
        config={"model": "simple_cnn", "lr": 1e-3},
        metrics={"zero_one_loss": loss, "val_accuracy": 1 - loss, "history": [{"epoch": 1, "loss": 0.7}]},
        seed=7,
        n_train=80,
        n_test=20,
        seconds=1.5,
        device="cpu",
        fingerprint="fp",
        plan_key="plan",
    )


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
    base = trial_key("cfg-a", "fp-1", fold_plan_key(folds))
    assert base == trial_key("cfg-a", "fp-1", fold_plan_key([(list(a), list(b)) for a, b in folds]))
    assert base != trial_key("cfg-b", "fp-1", fold_plan_key(folds))
    assert base != trial_key("cfg-a", "fp-2", fold_plan_key(folds))
    assert base != trial_key("cfg-a", "fp-1", fold_plan_key(other_folds))
    assert base != trial_key("cfg-a", "fp-1", fold_plan_key(folds[:1]))


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


def test_kill_during_writes_leaves_only_whole_rows(tmp_path):
    path = tmp_path / "trials.sqlite"
    writer = textwrap.dedent(
        f"""
        from muffin_lib.trials import TrialStore
        store = TrialStore({str(path)!r})
        for fold in range(100000):
            store.add(config_key="k", fold=fold, scope="cv", config={{"lr": 0.1}},
                      metrics={{"zero_one_loss": 0.5, "history": [0.1] * 500}})
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
