"""Grid search (optionally by successive halving) and nested cross-validation, on shared folds."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from muffin_lib.errors import MuffinError
from muffin_lib.selection.budget import SELECTION
from muffin_lib.selection.cv import CVResult, check_folds, cv_result, cv_tasks, fold_size_ratio
from muffin_lib.selection.execute import TrialCaches, run_tasks
from muffin_lib.selection.options import RunOptions
from muffin_lib.selection.stats import summarize_losses
from muffin_lib.selection.trial import (
    SUMMARY_COLUMNS,
    Folds,
    TrialTask,
    cache_classes,
    config_setting,
    fold_seed,
)
from muffin_lib.selection.trial_store import fold_plan_key, trial_key

# Grid search


def expand_grid(base_config, grid: dict[str, Sequence]) -> list:
    """Every combination of ``grid`` applied to ``base_config``, in the order the values are listed."""
    names = {f.name for f in dataclasses.fields(base_config)}
    unknown = sorted(set(grid) - names)
    if unknown:
        raise MuffinError(f"grid names {unknown} are not TrainConfig fields; choose from {sorted(names)}")
    for name, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise MuffinError(f"grid[{name!r}] must be a non-empty list of values, got {values!r}")
    keys = list(grid)
    combos = itertools.product(*(grid[k] for k in keys))
    return [base_config.replace(**dict(zip(keys, combo, strict=True))) for combo in combos]


@dataclass
class GridResult:
    """CV results of a grid, all on the same folds.

    ``results`` are the configurations of the last rung (all of them without successive halving);
    ``rungs`` holds every rung's results, ``table`` one row per (rung, configuration).
    """

    results: list[CVResult]
    varied: list[str]
    table: object  # pandas.DataFrame
    best: object  # recipe.TrainConfig
    best_result: CVResult
    trials: list[dict] = field(repr=False)
    rungs: list[list[CVResult]] = field(default_factory=list, repr=False)

    def heatmap(self, row: str, col: str, value: str = "mean", aggfunc: str = "min", rung: int = 0):
        """Pivot of ``value`` over two grid parameters at ``rung`` (0: the first, where every configuration
        ran); other varied parameters are reduced with ``aggfunc`` (``min`` = the best setting of the rest)."""
        for name in (row, col):
            if name not in self.table.columns:
                raise MuffinError(f"{name!r} is not a column of the grid table; choose from {self.varied}")
        table = self.table[self.table["rung"] == rung] if "rung" in self.table.columns else self.table
        return table.pivot_table(index=row, columns=col, values=value, aggfunc=aggfunc)

    def to_dict(self) -> dict:
        return {
            "varied": self.varied,
            "table": json.loads(self.table.to_json(orient="records")),
            "best": self.best.to_dict(),
            "best_config_key": self.best_result.config_key,
        }


def _grid_table(rungs: list[list[CVResult]], varied: Sequence[str]):
    import pandas as pd

    rows = []
    for rung, results in enumerate(rungs):
        for result in results:
            rows.append(_grid_row(result, varied, rung))
    return pd.DataFrame(rows)


def _grid_row(result: CVResult, varied: Sequence[str], rung: int) -> dict:
    row = {"rung": rung, "epochs": result.config.epochs, **{name: getattr(result.config, name) for name in varied}}
    row.update({column: result.summary[column] for column in SUMMARY_COLUMNS})
    row.update({"n_folds": result.summary["n"], "seconds": result.seconds, "config_key": result.config_key})
    return row


def _pick_best(results: list[CVResult]) -> int:
    # Lowest mean; ties go to the earlier grid entry (list simpler settings first).
    return min(range(len(results)), key=lambda i: (results[i].summary["mean"], i))


def grid_search(
    base_config,
    grid: dict[str, Sequence],
    cache,
    folds: Folds,
    *,
    groups=None,
    rung_epochs: Sequence[int] = (),
    keep: float = 1 / 3,
    scope: str = "cv",
    options: RunOptions | None = None,
) -> GridResult:
    """Cross-validate every combination of ``grid`` (TrainConfig field -> values) on the same ``folds``.

    Successive halving with ``rung_epochs`` (e.g. ``(3,)``): every configuration is first cross-validated
    with a complete schedule of ``rung_epochs[0]`` epochs, the best ``keep`` share (at least one) moves on
    to the next rung, and so on; the last rung runs at ``base_config.epochs``. Each rung's score is a
    last-epoch CV score of a whole schedule, so rungs are honest estimates, only cheaper; ``best`` comes
    from the last rung. Without ``rung_epochs`` every configuration runs at its own epochs (``base_config.epochs``
    unless the grid varies ``epochs``); a grid over epochs cannot also use ``rung_epochs``.

    ``groups`` (``SplitPlan.groups``, one twin-group id per cached image) keeps twins on one side of an
    early-stopping split. ``options`` (:class:`RunOptions`) say where trials are stored and how they run;
    grids over ``image_size`` / ``color_mode`` need a cache per setting: its ``cache_for`` or ``data_dir``
    and ``work_dir``. All trials of a rung are queued at once, so the Ray backend runs them in parallel.
    """
    configs = expand_grid(base_config, grid)
    if rung_epochs and "epochs" in grid:
        raise MuffinError(
            "a grid over epochs cannot also run successive halving: give rung_epochs=() (a plain grid), "
            "or set the last rung's epochs in base_config instead of the grid"
        )
    schedule = [int(e) for e in rung_epochs] + [int(base_config.epochs)]
    if any(e < 1 for e in schedule) or schedule != sorted(set(schedule)):
        raise MuffinError(
            f"rung_epochs must increase and stay below the final epochs ({base_config.epochs}); got {list(rung_epochs)}"
        )
    if not 0.0 < keep < 1.0:
        raise MuffinError(f"keep must lie strictly between 0 and 1 (the share kept per rung), got {keep}")
    varied = list(grid)
    options = (options or RunOptions()).reporting(varied)
    caches = TrialCaches(cache, options)
    for config in configs:
        caches.check(config)
    checked = check_folds(folds, len(cache.labels))

    rungs: list[list[CVResult]] = []
    alive = configs
    for number, epochs in enumerate(schedule):
        # The last rung keeps each configuration's own epochs (a grid over epochs), earlier rungs shorten them.
        last = number == len(schedule) - 1
        rung_configs = alive if last else [config.replace(epochs=epochs) for config in alive]
        per_config = [
            cv_tasks(config, cache, checked, scope=scope, device=options.device, groups=groups)
            for config in rung_configs
        ]
        records = run_tasks([task for tasks in per_config for task in tasks], caches, options)
        results = [cv_result(c, tasks, records) for c, tasks in zip(rung_configs, per_config, strict=True)]
        rungs.append(results)
        if number < len(schedule) - 1:
            n_keep = max(1, math.ceil(len(results) * keep))
            ranked = sorted(range(len(results)), key=lambda i: (results[i].summary["mean"], i))[:n_keep]
            alive = [alive[i] for i in sorted(ranked)]  # grid order kept: ties still favour the earlier entry
    results = rungs[-1]
    best = _pick_best(results)
    return GridResult(
        results=results,
        varied=varied,
        table=_grid_table(rungs, varied),
        best=results[best].config,
        best_result=results[best],
        trials=[trial for rung in rungs for result in rung for trial in result.trials],
        rungs=rungs,
    )


# --------------------------------------------------------------------------------------------------
# Nested cross-validation


@dataclass
class NestedCVResult:
    """Outer-fold risk of "grid search by inner CV, then refit on the outer-training part"."""

    outer_losses: list[float]
    summary: dict
    chosen: list[dict]
    inner: list[GridResult] = field(repr=False)
    trials: list[dict] = field(repr=False)

    @property
    def table(self):
        import pandas as pd

        return pd.DataFrame(self.chosen)

    def to_dict(self) -> dict:
        return {"outer_losses": self.outer_losses, "summary": self.summary, "chosen": self.chosen}


def stratified_folds(labels, n_splits: int, seed: int, indices=None, groups=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified K folds over ``indices`` (default: all) that keep each group of ``groups`` (one id per
    image of ``labels``; twins share one) whole; returned as indices into the full ``labels``."""
    from muffin_lib.data.splits import inner_folds

    all_labels = np.asarray(labels)
    indices = np.arange(len(all_labels)) if indices is None else np.asarray(indices, dtype=np.int64)
    subset_groups = None if groups is None else np.asarray(groups)[indices]
    return [(indices[a], indices[b]) for a, b in inner_folds(all_labels[indices], n_splits, seed, subset_groups)]


def nested_cv(
    base_config,
    grid: dict[str, Sequence],
    cache,
    *,
    outer_folds: int | Folds = 5,
    inner_folds: int = SELECTION.inner_splits,
    seed: int = 0,
    indices=None,
    groups=None,
    rung_epochs: Sequence[int] = (),
    keep: float = 1 / 3,
    options: RunOptions | None = None,
) -> NestedCVResult:
    """Nested CV: for each outer fold, grid-search by stratified inner CV on its training part, refit the
    winner on the whole outer-training part and score it once on the outer held-out fold.

    ``outer_folds`` is a number (stratified folds over ``indices``, default all of ``cache``) or explicit
    folds such as ``SplitPlan.folds``. ``groups`` (e.g. ``SplitPlan.groups``: one id per cached image,
    twins share one) keeps near-duplicates on one side of every inner and generated outer fold.
    ``rung_epochs`` and ``keep`` make each inner grid search a successive halving (see :func:`grid_search`).
    Inner trials are stored with scope ``nested-inner``, outer refits with ``nested-outer``; ``options``
    (:class:`RunOptions`) say where and how all of them run.
    """
    from muffin_lib.training import runtime

    labels = np.asarray(cache.labels)
    if isinstance(outer_folds, int):
        outer = stratified_folds(labels, outer_folds, seed, indices, groups)
    else:
        outer = check_folds(outer_folds, len(labels))
    outer_plan = fold_plan_key(outer)
    fp = getattr(cache, "fingerprint", None)
    varied = list(grid)
    options = (options or RunOptions()).reporting(varied)
    caches = TrialCaches(cache, options)
    inner_options = options.replace(cache_for=caches.get)  # every inner search shares the caches loaded here
    store = options.store

    inner_results, chosen, outer_losses, trials, trials_outer = [], [], [], [], []
    for number, (outer_train, outer_test) in enumerate(outer):
        inner = stratified_folds(labels, inner_folds, seed + 1 + number, outer_train, groups)
        searched = grid_search(base_config, grid, cache, inner, groups=groups, rung_epochs=rung_epochs, keep=keep,
                               scope="nested-inner", options=inner_options)
        winner = searched.best
        execution = runtime.execution_key(winner.amp, options.device, winner)
        task = TrialTask(
            config=winner,
            setting=config_setting(winner),
            fold=number,
            train_idx=outer_train,
            test_idx=outer_test,
            config_key=trial_key(winner.key(), fp, outer_plan, execution=execution),
            scope="nested-outer",
            plan_key=outer_plan,
            fingerprint=fp,
            seed=fold_seed(winner.seed, number),
            execution=execution,
            groups=None if groups is None else np.asarray(groups)[outer_train],
            num_classes=cache_classes(cache),
        )
        # On the study's folds, the outer refit of a configuration IS its CV trial on that fold (same images,
        # seed and key): reuse 06's trial when it is stored instead of training the same model again.
        same_as_cv = store.get(task.config_key, number, "cv") if store is not None else None
        if same_as_cv is not None:
            record = {**same_as_cv, "status": "stored"}
            if options.on_trial is not None:
                options.on_trial(record)
        else:
            record = run_tasks([task], caches, options)[task.identity]
        inner_results.append(searched)
        trials.extend([*searched.trials, record])
        trials_outer.append(record)
        outer_losses.append(float(record["zero_one_loss"]))
        chosen.append(
            {
                "outer_fold": number,
                **{name: getattr(winner, name) for name in varied},
                "inner_mean": searched.best_result.summary["mean"],
                "inner_se": searched.best_result.summary["se"],
                "zero_one_loss": float(record["zero_one_loss"]),
                "n_test": int(record["n_test"]),
                "config_key": task.config_key,
            }
        )
    return NestedCVResult(
        outer_losses=outer_losses,
        summary=summarize_losses(outer_losses, test_train_ratio=fold_size_ratio(trials_outer)),
        chosen=chosen,
        inner=inner_results,
        trials=trials,
    )


