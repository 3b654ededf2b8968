"""K-fold cross-validation of one configuration, and the corrected paired comparison of two."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from muffin_lib.errors import MuffinError
from muffin_lib.selection.execute import TrialCaches, run_tasks
from muffin_lib.selection.options import RunOptions
from muffin_lib.selection.stats import add_holm, corrected_resampled_ttest, summarize_losses
from muffin_lib.selection.trial import Folds, TrialTask, cache_classes, config_setting, fold_seed
from muffin_lib.selection.trial_store import fold_plan_key, trial_key


@dataclass
class CVResult:
    """Per-fold zero-one losses of one configuration on one fold plan, and their summary."""

    config: object
    config_key: str
    plan_key: str
    losses: list[float]
    summary: dict
    trials: list[dict]
    n_train: float
    n_test: float
    seconds: float


def check_folds(folds: Folds, n_samples: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` as int64 index arrays, or a MuffinError for an empty, overlapping or out-of-range fold."""
    checked = []
    for number, (train_idx, test_idx) in enumerate(folds):
        train_idx, test_idx = np.asarray(train_idx, dtype=np.int64), np.asarray(test_idx, dtype=np.int64)
        if train_idx.size == 0 or test_idx.size == 0:
            raise MuffinError(f"fold {number} has an empty training or held-out part; use fewer folds")
        if np.intersect1d(train_idx, test_idx).size:
            raise MuffinError(f"fold {number}: training and held-out indices overlap; the fold plan is "
                              "broken")
        if max(train_idx.max(), test_idx.max()) >= n_samples or min(train_idx.min(), test_idx.min()) < 0:
            raise MuffinError(
                f"fold {number} indexes beyond the {n_samples} cached images: the folds were made for "
                "another dataset; recreate the split plan for this cache"
            )
        checked.append((train_idx, test_idx))
    if not checked:
        raise MuffinError("no folds given; make a split plan with n_splits >= 2")
    return checked


def cv_tasks(config, cache, folds, *, scope: str, device: str, groups=None) -> list[TrialTask]:
    """One :class:`TrialTask` per fold of ``folds`` (checked, indexing ``cache``) for ``config``, keyed by the
    configuration, the cache's content fingerprint, the fold plan and the execution on ``device``."""
    from muffin_lib.training import runtime

    fingerprint, plan = getattr(cache, "fingerprint", None), fold_plan_key(folds)
    execution = runtime.execution_key(config.amp, device, config)
    key = trial_key(config.key(), fingerprint, plan, execution=execution)
    return [
        TrialTask(config=config, setting=config_setting(config), fold=number, train_idx=train_idx,
                  test_idx=test_idx, config_key=key, scope=scope, plan_key=plan, fingerprint=fingerprint,
                  seed=fold_seed(config.seed, number), execution=execution, num_classes=cache_classes(cache),
                  groups=None if groups is None else np.asarray(groups)[train_idx])
        for number, (train_idx, test_idx) in enumerate(folds)
    ]


def fold_size_ratio(trials: list[dict]) -> float | None:
    """n_test / n_train of the folds, for the corrected (Nadeau-Bengio) variance of their mean loss."""
    n_train = float(np.mean([t["n_train"] for t in trials]))
    return float(np.mean([t["n_test"] for t in trials])) / n_train if n_train > 0 else None


def cv_result(config, tasks: list[TrialTask], records: dict) -> CVResult:
    """The :class:`CVResult` of ``config`` from the records (by task identity) of its ``tasks``."""
    trials = [records[task.identity] for task in tasks]
    losses = [float(trial["zero_one_loss"]) for trial in trials]
    return CVResult(config=config, config_key=tasks[0].config_key, plan_key=tasks[0].plan_key, losses=losses,
                    summary=summarize_losses(losses, test_train_ratio=fold_size_ratio(trials)), trials=trials,
                    n_train=float(np.mean([t["n_train"] for t in trials])),
                    n_test=float(np.mean([t["n_test"] for t in trials])),
                    seconds=float(sum(t.get("seconds") or 0.0 for t in trials)))


def cross_validate(config, cache, folds: Folds, *, groups=None, scope: str = "cv",
                   options: RunOptions | None = None) -> CVResult:
    """K-fold CV of one configuration: zero-one loss on each held-out fold of ``folds`` (indices into
    ``cache``), after the last epoch. ``groups`` (one twin-group id per cached image) keeps twins on one
    side of an early-stopping split; trials already in ``options.store`` are not re-run."""
    each = cross_validate_each({"config": config}, cache, folds, groups=groups, scope=scope, options=options)
    return each["config"]


def cross_validate_each(configs: Mapping[str, object], cache, folds: Folds, *, groups=None, scope: str = "cv",
                        options: RunOptions | None = None) -> dict[str, CVResult]:
    """:func:`cross_validate` of each of ``configs`` (name -> config) on the same folds, with every fold of
    every configuration queued at once, so parallel workers are not left idle between configurations."""
    fields = [config.to_dict() for config in configs.values()]
    varied = [name for name in fields[0] if len({repr(f[name]) for f in fields}) > 1] if fields else []
    options = (options or RunOptions()).reporting(varied)  # each trial's line names what tells them apart
    caches = TrialCaches(cache, options)
    for config in configs.values():
        caches.check(config)
    checked = check_folds(folds, len(cache.labels))
    tasks = {name: cv_tasks(config, cache, checked, scope=scope, device=options.device, groups=groups)
             for name, config in configs.items()}
    records = run_tasks([task for each in tasks.values() for task in each], caches, options)
    return {name: cv_result(config, tasks[name], records) for name, config in configs.items()}


def compare_configs(config_a, config_b, cv_a: CVResult, cv_b: CVResult, n_train: int | None = None,
                    n_test: int | None = None, confidence: float = 0.95) -> dict:
    """Corrected resampled t-test (Nadeau & Bengio) of two configurations scored on identical folds.

    ``mean_diff`` is loss(a) - loss(b): negative means ``config_a`` is better. ``n_train`` / ``n_test``
    default to the fold sizes recorded in the CV results.
    """
    if cv_a.plan_key != cv_b.plan_key or len(cv_a.losses) != len(cv_b.losses):
        raise MuffinError(
            "compare_configs needs both configurations cross-validated on the same folds "
            "(same split plan and dataset); re-run cross_validate with the same folds"
        )
    for config, result, name in ((config_a, cv_a, "a"), (config_b, cv_b, "b")):
        if config.key() != result.config.key():
            raise MuffinError(f"cv_{name} holds the results of another configuration than config_{name}")
    test = corrected_resampled_ttest(cv_a.losses, cv_b.losses, confidence=confidence,
                                     n_train=int(round(n_train if n_train is not None else cv_a.n_train)),
                                     n_test=int(round(n_test if n_test is not None else cv_a.n_test)))
    return {"mean_a": cv_a.summary["mean"], "mean_b": cv_b.summary["mean"], **test}


def compare_all(configs: dict, results: dict[str, CVResult], confidence: float = 0.95,
                alpha: float = 0.05) -> list[dict]:
    """:func:`compare_configs` for every pair of ``configs`` (name -> config), in insertion order, with
    ``a``, ``b``, and Holm's ``p_holm`` over all these pairs and ``significant`` (``p_holm < alpha``)."""
    rows = [{"a": a, "b": b, **compare_configs(configs[a], configs[b], results[a], results[b],
                                               confidence=confidence)}
            for a, b in itertools.combinations(list(configs), 2)]
    return add_holm(rows, alpha)
