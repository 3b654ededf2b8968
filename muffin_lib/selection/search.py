"""Grid search (optionally by successive halving) and nested cross-validation, on shared folds."""

from __future__ import annotations

import dataclasses
import itertools
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
from muffin_lib.selection.trial import SUMMARY_COLUMNS, Folds, TrialTask

KEEP = 1 / 3  # successive halving: the share of configurations each rung passes on (at least one)


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
    return [base_config.replace(**dict(zip(keys, combo, strict=True)))
            for combo in itertools.product(*(grid[k] for k in keys))]


@dataclass
class GridResult:
    """CV results of a grid, all on the same folds: ``results`` of the last rung (every configuration without
    successive halving), ``rungs`` every rung's, ``table`` one row per (rung, configuration)."""

    results: list[CVResult]
    varied: list[str]
    table: object  # pandas.DataFrame
    best: object  # recipe.TrainConfig
    best_result: CVResult
    trials: list[dict] = field(repr=False)
    rungs: list[list[CVResult]] = field(default_factory=list, repr=False)

    def heatmap(self, row: str, col: str, value: str = "mean", aggfunc: str = "min", rung: int = 0):
        """Pivot of ``value`` over two grid parameters at ``rung`` (0: the first, where every configuration
        ran); other varied parameters are reduced with ``aggfunc`` (``min``: the best setting of the rest)."""
        for name in (row, col):
            if name not in self.table.columns:
                raise MuffinError(f"{name!r} is not a column of the grid table; choose from {self.varied}")
        table = self.table[self.table["rung"] == rung] if "rung" in self.table.columns else self.table
        return table.pivot_table(index=row, columns=col, values=value, aggfunc=aggfunc)


def _grid_table(rungs: list[list[CVResult]], varied: Sequence[str]):
    import pandas as pd

    rows = []
    for rung, results in enumerate(rungs):
        for result in results:
            row = {"rung": rung, "epochs": result.config.epochs}
            row.update({name: getattr(result.config, name) for name in varied})
            row.update({column: result.summary[column] for column in SUMMARY_COLUMNS})
            rows.append({**row, "n_folds": result.summary["n"], "seconds": result.seconds,
                         "config_key": result.config_key})
    return pd.DataFrame(rows)


def _ranked(results: list[CVResult]) -> list[int]:
    # Lowest mean first; ties go to the earlier grid entry (list simpler settings first).
    return sorted(range(len(results)), key=lambda i: (results[i].summary["mean"], i))


def _schedule(base_config, grid: dict, rung_epochs: Sequence[int]) -> list[int]:
    if rung_epochs and "epochs" in grid:
        raise MuffinError(
            "a grid over epochs cannot also run successive halving: give rung_epochs=() (a plain grid), "
            "or set the last rung's epochs in base_config instead of the grid"
        )
    schedule = [int(e) for e in rung_epochs] + [int(base_config.epochs)]
    if any(e < 1 for e in schedule) or schedule != sorted(set(schedule)):
        raise MuffinError(f"rung_epochs must increase and stay below the final epochs "
                          f"({base_config.epochs}); got {list(rung_epochs)}")
    return schedule


def grid_search(base_config, grid: dict[str, Sequence], cache, folds: Folds, *, groups=None,
                rung_epochs: Sequence[int] = (), scope: str = "cv",
                options: RunOptions | None = None) -> GridResult:
    """Cross-validate every combination of ``grid`` (TrainConfig field -> values) on the same ``folds``.

    With ``rung_epochs`` (e.g. ``(3,)``, successive halving) every configuration first runs a complete
    schedule of ``rung_epochs[0]`` epochs, the best third (``KEEP``) goes on to the next rung, and the last
    rung runs at ``base_config.epochs``: each rung is an honest last-epoch CV score, only cheaper; ``best``
    comes from the last. ``groups`` (one twin-group id per cached image) keeps twins on one side of an
    early-stopping split; a grid over ``image_size`` / ``color_mode`` needs ``options.cache_for`` or
    ``data_dir`` and ``work_dir``. All trials of a rung are queued at once (parallel on Ray or workers).
    """
    configs = expand_grid(base_config, grid)
    schedule = _schedule(base_config, grid, rung_epochs)
    varied = list(grid)
    options = (options or RunOptions()).reporting(varied)
    caches = TrialCaches(cache, options)
    for config in configs:
        caches.check(config)
    checked = check_folds(folds, len(cache.labels))
    rungs: list[list[CVResult]] = []
    alive = configs
    for number, epochs in enumerate(schedule):
        # The last rung keeps each configuration's own epochs (a grid over epochs), earlier rungs shorten.
        last = number == len(schedule) - 1
        rung_configs = alive if last else [config.replace(epochs=epochs) for config in alive]
        per_config = [cv_tasks(config, cache, checked, scope=scope, device=options.device, groups=groups)
                      for config in rung_configs]
        records = run_tasks([task for tasks in per_config for task in tasks], caches, options)
        rungs.append([cv_result(config, tasks, records)
                      for config, tasks in zip(rung_configs, per_config, strict=True)])
        if not last:
            kept = _ranked(rungs[-1])[: max(1, math.ceil(len(rungs[-1]) * KEEP))]
            alive = [alive[i] for i in sorted(kept)]  # grid order kept: ties still favour the earlier entry
    results = rungs[-1]
    best = results[_ranked(results)[0]]
    trials = [trial for rung in rungs for result in rung for trial in result.trials]
    return GridResult(results=results, varied=varied, table=_grid_table(rungs, varied), best=best.config,
                      best_result=best, trials=trials, rungs=rungs)


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


@dataclass(frozen=True)
class NestedFolds:
    """The folds of nested CV: ``outer`` (a number of stratified folds over the cache, or explicit folds such
    as ``SplitPlan.folds``), ``inner`` stratified folds in each outer-training part, and their ``seed``."""

    outer: int | Folds = 5
    inner: int = SELECTION.inner_splits
    seed: int = 0


def stratified_folds(labels, n_splits: int, seed: int, indices=None, groups=None) -> list[tuple]:
    """Stratified K folds over ``indices`` (default: all) that keep each group of ``groups`` (one id per
    image of ``labels``; twins share one) whole; returned as indices into the full ``labels``."""
    from muffin_lib.data.splits import inner_folds

    all_labels = np.asarray(labels)
    indices = np.arange(len(all_labels)) if indices is None else np.asarray(indices, dtype=np.int64)
    subset_groups = None if groups is None else np.asarray(groups)[indices]
    folds = inner_folds(all_labels[indices], n_splits, seed, subset_groups)
    return [(indices[a], indices[b]) for a, b in folds]


def _outer_refit(task: TrialTask, caches: TrialCaches, options: RunOptions) -> dict:
    # On the study's folds, the outer refit of a configuration IS its CV trial on that fold (same images, seed
    # and key): reuse 06's trial when it is stored instead of training the same model again.
    same_as_cv = options.store.get(task.config_key, task.fold, "cv") if options.store is not None else None
    if same_as_cv is None:
        return run_tasks([task], caches, options)[task.identity]
    record = {**same_as_cv, "status": "stored"}
    if options.on_trial is not None:
        options.on_trial(record)
    return record


def nested_cv(base_config, grid: dict[str, Sequence], cache, folds: NestedFolds | None = None, *, groups=None,
              rung_epochs: Sequence[int] = (), options: RunOptions | None = None) -> NestedCVResult:
    """Nested CV: for each outer fold of ``folds``, grid-search by stratified inner CV on its training part,
    refit the winner on the whole outer-training part and score it once on the outer held-out fold.

    ``groups`` (one id per cached image, twins share one) keeps near-duplicates on one side of every inner and
    generated outer fold; ``rung_epochs`` makes each inner search a successive halving (:func:`grid_search`).
    Inner trials are stored with scope ``nested-inner``, outer refits with ``nested-outer``.
    """
    folds = folds or NestedFolds()
    labels = np.asarray(cache.labels)
    if isinstance(folds.outer, int):
        outer = stratified_folds(labels, folds.outer, folds.seed, groups=groups)
    else:
        outer = check_folds(folds.outer, len(labels))
    varied = list(grid)
    options = (options or RunOptions()).reporting(varied)
    caches = TrialCaches(cache, options)
    inner_options = options.replace(cache_for=caches.get)  # every inner search shares the caches loaded here
    searches, records, chosen = [], [], []
    for number, (outer_train, _) in enumerate(outer):
        inner = stratified_folds(labels, folds.inner, folds.seed + 1 + number, outer_train, groups)
        searched = grid_search(base_config, grid, cache, inner, groups=groups, rung_epochs=rung_epochs,
                               scope="nested-inner", options=inner_options)
        task = cv_tasks(searched.best, cache, outer, scope="nested-outer", device=options.device,
                        groups=groups)[number]
        record = _outer_refit(task, caches, options)
        searches.append(searched)
        records.append(record)
        inner_summary = searched.best_result.summary
        chosen.append({"outer_fold": number, **{name: getattr(searched.best, name) for name in varied},
                       "inner_mean": inner_summary["mean"], "inner_se": inner_summary["se"],
                       "zero_one_loss": float(record["zero_one_loss"]), "n_test": int(record["n_test"]),
                       "config_key": task.config_key})
    losses = [float(record["zero_one_loss"]) for record in records]
    trials = [trial for s, record in zip(searches, records, strict=True) for trial in (*s.trials, record)]
    summary = summarize_losses(losses, test_train_ratio=fold_size_ratio(records))
    return NestedCVResult(outer_losses=losses, summary=summary, chosen=chosen, inner=searches, trials=trials)
