"""Refit a configuration on the whole training split and score it once on the test split (stored)."""

from __future__ import annotations

import numpy as np

from muffin_lib.errors import MuffinError
from muffin_lib.selection.trial import (
    TrialTask,
    cache_classes,
    cache_setting,
    config_setting,
    run_trial,
    take_rows,
    trial_record,
)
from muffin_lib.selection.trial_store import TrialStore, fold_plan_key, trial_key


def refit_and_test(
    config,
    train_cache,
    test_cache,
    *,
    store: TrialStore | None = None,
    device: str = "auto",
    progress: bool = True,
    train_idx=None,
    confidence: float = 0.95,
    groups=None,
) -> dict:
    """Fit ``config`` on the whole training split and evaluate it ONCE on the test split.

    The result is stored with scope ``test``; asking again returns the stored evaluation instead of
    looking at the test split a second time. Returns zero_one_loss, n, errors, accuracy, the Wilson
    interval of the error rate (ci_low, ci_high), seconds and ``status`` (trained / stored).
    """
    from muffin_lib.training import engine
    from muffin_lib.training.metrics import binomial_interval

    for name, cache in (("train_cache", train_cache), ("test_cache", test_cache)):
        if cache_setting(cache) != config_setting(config):
            raise MuffinError(
                f"{name} holds {cache_setting(cache)} images but the configuration wants {config_setting(config)}; "
                "load the caches with the configuration's image_size and color_mode"
            )
    n_train_total = len(train_cache.labels)
    train_idx = np.arange(n_train_total) if train_idx is None else np.asarray(train_idx, dtype=np.int64)
    test_fp = getattr(test_cache, "fingerprint", None)
    fingerprint = f"{getattr(train_cache, 'fingerprint', None)}|{test_fp}"
    plan = fold_plan_key([(train_idx, np.arange(len(test_cache.labels)))])
    execution = engine.execution_key(config.amp, device, config)
    task = TrialTask(
        config=config,
        setting=config_setting(config),
        fold=0,
        train_idx=train_idx,
        test_idx=np.arange(len(test_cache.labels)),
        config_key=trial_key(config.key(), fingerprint, plan, execution=execution),
        scope="test",
        plan_key=plan,
        fingerprint=fingerprint,
        seed=int(config.seed),
        execution=execution,
        num_classes=cache_classes(train_cache),
    )
    record = store.get(*task.identity) if store is not None else None
    status = "stored"
    if record is None:
        outcome = run_trial(
            config,
            take_rows(train_cache.images, train_idx),
            take_rows(train_cache.labels, train_idx),
            test_cache.images,
            test_cache.labels,
            seed=task.seed,
            device=device,
            progress=progress,
            groups=None if groups is None else np.asarray(groups)[train_idx],
            num_classes=task.num_classes,
        )
        record = trial_record(task, outcome)
        status = "trained"
        if store is not None:
            store.add_record(record)
    metrics = record["metrics"]
    low, high = binomial_interval(metrics["errors"], metrics["n"], confidence=confidence, method="wilson")
    return {
        "zero_one_loss": metrics["zero_one_loss"],
        "accuracy": metrics["accuracy"],
        "errors": metrics["errors"],
        "n": metrics["n"],
        "ci_low": float(low),
        "ci_high": float(high),
        "confidence": confidence,
        "n_train": record["n_train"],
        "seconds": record["seconds"],
        "config": record["config"],
        "config_key": record["config_key"],
        "status": status,
    }


