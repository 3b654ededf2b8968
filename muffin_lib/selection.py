"""Model selection: K-fold cross-validation, grid search, nested CV, paired comparison, one test evaluation.

Rules that keep the estimates honest:

* every configuration of a grid is scored on the SAME folds (indices into the cache order);
* each fold trains a fresh model, seeded from ``config.seed`` and the fold number, on the other K-1
  folds (normalisation and augmentation come from those only, inside ``engine.fit``);
* the held-out fold is only evaluated, once, with the model after the configured number of epochs.
  No epoch is chosen on it; when ``early_stopping_patience`` is set, the early-stopping split is
  carved out of the training folds;
* the test split is touched by :func:`refit_and_test` only.

Every finished trial is committed to the :class:`~muffin_lib.trials.TrialStore` at once, so an
interrupted run resumes where it stopped; trials already stored are never trained again.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from muffin_lib.errors import MuffinError
from muffin_lib.stats import corrected_resampled_ttest, summarize_losses
from muffin_lib.trials import TrialStore, fold_plan_key, trial_key

BACKENDS = ("serial", "ray")
# Share of the training folds held back for early stopping when a config asks for it.
EARLY_STOPPING_FRACTION = 0.2
SUMMARY_COLUMNS = ("mean", "std", "se", "ci_low", "ci_high")

Folds = Sequence[tuple[np.ndarray, np.ndarray]]
OnTrial = Callable[[dict], None]


# --------------------------------------------------------------------------------------------------
# One trial


@dataclass
class TrialTask:
    """One (configuration, fold) to train and score; ``setting`` names the cache its images come from."""

    config: object  # engine.TrainConfig
    setting: tuple[int, str]
    fold: int
    train_idx: np.ndarray
    test_idx: np.ndarray
    config_key: str
    scope: str
    plan_key: str
    fingerprint: str | None
    seed: int
    execution: str  # engine.execution_key of the run, e.g. "cpu/fp32"; part of config_key

    @property
    def identity(self) -> tuple[str, int, str]:
        return (self.config_key, self.fold, self.scope)


def fold_seed(seed: int, fold: int) -> int:
    """A per-fold seed derived from the config seed, so folds never share an initialisation by accident."""
    return int(np.random.SeedSequence([int(seed), int(fold)]).generate_state(1)[0] % (2**31 - 1))


def _take(values, indices: np.ndarray) -> torch.Tensor:
    """The rows ``indices`` of a tensor or array, as a tensor. Fancy indexing copies, so this also works
    on the read-only buffers of Ray's object store."""
    if isinstance(values, torch.Tensor):
        return values[torch.as_tensor(np.asarray(indices, dtype=np.int64))]
    return torch.from_numpy(np.asarray(values)[np.asarray(indices, dtype=np.int64)])


def _jsonable(value):
    """History entries may hold numpy/torch scalars; the store keeps plain JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _early_stopping_split(train_idx: np.ndarray, labels, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    train_labels = np.asarray(_take(labels, train_idx))
    fit_idx, stop_idx = train_test_split(
        np.asarray(train_idx),
        test_size=EARLY_STOPPING_FRACTION,
        stratify=train_labels,
        random_state=seed,
    )
    return np.sort(fit_idx), np.sort(stop_idx)


def run_trial(
    config,
    train_images,
    train_labels,
    test_images,
    test_labels,
    *,
    seed: int,
    device: str = "auto",
    progress: bool = False,
) -> dict:
    """Fit a fresh model on the training part and evaluate it once on the held-out part.

    Returns the stored fields: ``metrics`` (zero_one_loss, loss, accuracy, errors, n, history),
    ``seed``, ``n_train``, ``n_test``, ``seconds``, ``device`` and ``execution`` (the device type and
    precision the fit really used, ``engine.execution_key``).
    """
    from muffin_lib import engine

    trial_config = config.replace(seed=int(seed))
    fit_images, fit_labels = train_images, train_labels
    stop_images = stop_labels = None
    if getattr(config, "early_stopping_patience", None):
        fit_idx, stop_idx = _early_stopping_split(np.arange(len(train_labels)), train_labels, seed)
        fit_images, fit_labels = _take(train_images, fit_idx), _take(train_labels, fit_idx)
        stop_images, stop_labels = _take(train_images, stop_idx), _take(train_labels, stop_idx)
    started = time.perf_counter()
    fitted = engine.fit(
        trial_config,
        fit_images,
        fit_labels,
        stop_images,
        stop_labels,
        device=device,
        progress=progress,
    )
    scores = engine.evaluate(fitted.model, test_images, test_labels, fitted.normalization, device=fitted.device)
    seconds = time.perf_counter() - started
    n_test = int(scores.get("n", len(test_labels)))
    # Exact errors / n: the engine's float32 accuracy would store 0.40909093... for 9/22.
    errors = int(round(float(scores["zero_one_loss"]) * n_test))
    metrics = {
        "zero_one_loss": errors / n_test,
        "loss": float(scores["loss"]),
        "accuracy": 1.0 - errors / n_test,
        "n": n_test,
        "errors": errors,
        "history": _jsonable(fitted.history),
    }
    return {
        "metrics": metrics,
        "seed": int(seed),
        "n_train": int(len(fit_labels)),
        "n_test": n_test,
        "seconds": seconds,
        "device": str(fitted.device),
        "execution": engine.execution_key(trial_config.amp, fitted.device),
    }


def run_task(task: TrialTask, images, labels, *, device: str = "auto", progress: bool = False) -> dict:
    """:func:`run_trial` for a :class:`TrialTask` on its cache arrays; returns the full store record."""
    outcome = run_trial(
        task.config,
        _take(images, task.train_idx),
        _take(labels, task.train_idx),
        _take(images, task.test_idx),
        _take(labels, task.test_idx),
        seed=task.seed,
        device=device,
        progress=progress,
    )
    return _record(task, outcome)


def _record(task: TrialTask, outcome: dict) -> dict:
    ran = outcome.get("execution", task.execution)
    if ran != task.execution:
        # E.g. a Ray worker without a GPU resolving device 'auto' to the CPU: never store that under this key.
        raise MuffinError(
            f"trial {task.config_key} fold {task.fold} ({task.scope}) was keyed for {task.execution} but trained "
            f"as {ran} (device {outcome.get('device')}); pass an explicit --device that every worker has "
            "(with Ray on a GPU also --gpus-per-trial > 0) and run again"
        )
    return {
        "config_key": task.config_key,
        "fold": int(task.fold),
        "scope": task.scope,
        "config": task.config.to_dict(),
        "fingerprint": task.fingerprint,
        "plan_key": task.plan_key,
        "zero_one_loss": outcome["metrics"]["zero_one_loss"],
        **outcome,
        # The store has no column for it: it is kept in the metrics JSON (TrialStore returns it as "execution").
        "metrics": {**outcome["metrics"], "execution": task.execution},
        "execution": task.execution,
    }


# --------------------------------------------------------------------------------------------------
# Caches per (image_size, color_mode) and running a batch of trials


def cache_setting(cache) -> tuple[int, str]:
    """``(image_size, color_mode)`` of an ImageCache, read from its tensor shape."""
    channels, height = int(cache.images.shape[1]), int(cache.images.shape[2])
    return height, "grayscale" if channels == 1 else "rgb"


def config_setting(config) -> tuple[int, str]:
    return int(config.image_size), str(config.color_mode)


class _Caches:
    """The caches a grid needs, all in the same record order (the folds index every one of them)."""

    def __init__(self, cache, cache_for=None, data_dir=None, work_dir=None, progress=True):
        self.base = cache
        self._by_setting = {cache_setting(cache): cache}
        if cache_for is None and data_dir is not None and work_dir is not None:

            def cache_for(image_size, color_mode):
                from muffin_lib.cache import load_images

                split = "train"
                return load_images(data_dir, work_dir, split, image_size, color_mode, progress=progress)

        self._cache_for = cache_for

    def get(self, setting: tuple[int, str]):
        if setting in self._by_setting:
            return self._by_setting[setting]
        if self._cache_for is None:
            have = cache_setting(self.base)
            raise MuffinError(
                f"configuration wants image_size={setting[0]}, color_mode={setting[1]!r} but the cache holds "
                f"{have[0]} px {have[1]!r} images; pass cache_for=(image_size, color_mode) -> ImageCache, "
                "or data_dir and work_dir, so the matching cache can be loaded"
            )
        cache = self._cache_for(*setting)
        if cache_setting(cache) != setting:
            raise MuffinError(f"cache_for{setting} returned a cache of {cache_setting(cache)} images")
        same_order = list(cache.relpaths) == list(self.base.relpaths) and np.array_equal(
            np.asarray(cache.labels), np.asarray(self.base.labels)
        )
        if not same_order:
            raise MuffinError(
                f"the {setting[0]} px {setting[1]} cache lists other images (or another order) than the "
                f"{cache_setting(self.base)} cache, so the folds would not match; load both from the same data_dir"
            )
        self._by_setting[setting] = cache
        return cache

    def check(self, config) -> None:
        self.get(config_setting(config))


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise MuffinError(f"backend must be one of {BACKENDS}, got {backend!r}")


def describe_trial(record: dict, varied: Sequence[str] = ()) -> str:
    """One progress line: ``[trained] lr=0.001 batch_size=32 fold 2 (cv): zero-one loss 0.2150 (41.2 s)``."""
    parts = [f"[{record.get('status', 'trained'):>7}]"]
    parts += [f"{name}={record['config'].get(name)}" for name in varied]
    parts.append(f"fold {record['fold']} ({record['scope']}): zero-one loss {record['zero_one_loss']:.4f}")
    parts.append(f"({record.get('seconds') or 0.0:.1f} s)")
    return " ".join(parts)


def _run_tasks(
    tasks: Sequence[TrialTask],
    caches: _Caches,
    *,
    store: TrialStore | None,
    device: str,
    progress: bool,
    backend: str,
    on_trial: OnTrial | None,
    ray_options: dict | None,
) -> dict[tuple[str, int, str], dict]:
    """Run the tasks not yet in ``store``; each result is committed as soon as its trial ends."""
    _check_backend(backend)
    records: dict[tuple[str, int, str], dict] = {}
    pending: dict[tuple[str, int, str], TrialTask] = {}
    for task in tasks:
        stored = store.get(*task.identity) if store is not None else None
        if stored is not None:
            stored["status"] = "stored"
            records[task.identity] = stored
            if on_trial is not None:
                on_trial(stored)
        else:
            pending.setdefault(task.identity, task)

    def finish(record: dict) -> None:
        if store is not None:
            store.add_record(record)
        record = {**record, "status": "trained"}
        records[(record["config_key"], record["fold"], record["scope"])] = record
        if on_trial is not None:
            on_trial(record)

    if not pending:
        return records
    if backend == "ray":
        from muffin_lib import ray_backend

        needed = {setting: caches.get(setting) for setting in {t.setting for t in pending.values()}}
        ray_backend.run_tasks(list(pending.values()), needed, on_record=finish, device=device, **(ray_options or {}))
    else:
        for task in pending.values():
            cache = caches.get(task.setting)
            finish(run_task(task, cache.images, cache.labels, device=device, progress=progress))
    return records


# --------------------------------------------------------------------------------------------------
# Cross-validation


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

    def to_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "config_key": self.config_key,
            "plan_key": self.plan_key,
            "losses": self.losses,
            "summary": self.summary,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "seconds": self.seconds,
        }


def _check_folds(folds: Folds, n_samples: int) -> list[tuple[np.ndarray, np.ndarray]]:
    checked = []
    for number, (train_idx, test_idx) in enumerate(folds):
        train_idx, test_idx = np.asarray(train_idx, dtype=np.int64), np.asarray(test_idx, dtype=np.int64)
        if train_idx.size == 0 or test_idx.size == 0:
            raise MuffinError(f"fold {number} has an empty training or held-out part; use fewer folds")
        if np.intersect1d(train_idx, test_idx).size:
            raise MuffinError(f"fold {number}: training and held-out indices overlap; the fold plan is broken")
        if max(train_idx.max(), test_idx.max()) >= n_samples or min(train_idx.min(), test_idx.min()) < 0:
            raise MuffinError(
                f"fold {number} indexes beyond the {n_samples} cached images: the folds were made for "
                "another dataset; recreate the split plan for this cache"
            )
        checked.append((train_idx, test_idx))
    if not checked:
        raise MuffinError("no folds given; make a split plan with n_splits >= 2")
    return checked


def _cv_tasks(config, folds, *, scope: str, fingerprint: str | None, setting, device) -> list[TrialTask]:
    from muffin_lib import engine

    plan = fold_plan_key(folds)
    execution = engine.execution_key(config.amp, device)
    key = trial_key(config.key(), fingerprint, plan, execution=execution)
    return [
        TrialTask(
            config=config,
            setting=setting,
            fold=number,
            train_idx=train_idx,
            test_idx=test_idx,
            config_key=key,
            scope=scope,
            plan_key=plan,
            fingerprint=fingerprint,
            seed=fold_seed(config.seed, number),
            execution=execution,
        )
        for number, (train_idx, test_idx) in enumerate(folds)
    ]


def _test_train_ratio(trials: list[dict]) -> float | None:
    """n_test / n_train of the folds, for the corrected (Nadeau-Bengio) variance of their mean loss."""
    n_train = float(np.mean([t["n_train"] for t in trials]))
    return float(np.mean([t["n_test"] for t in trials])) / n_train if n_train > 0 else None


def _cv_result(config, tasks: list[TrialTask], records: dict) -> CVResult:
    trials = [records[task.identity] for task in tasks]
    losses = [float(trial["zero_one_loss"]) for trial in trials]
    return CVResult(
        config=config,
        config_key=tasks[0].config_key,
        plan_key=tasks[0].plan_key,
        losses=losses,
        summary=summarize_losses(losses, test_train_ratio=_test_train_ratio(trials)),
        trials=trials,
        n_train=float(np.mean([t["n_train"] for t in trials])),
        n_test=float(np.mean([t["n_test"] for t in trials])),
        seconds=float(sum(t.get("seconds") or 0.0 for t in trials)),
    )


def _fingerprint(cache, fingerprint: str | None) -> str | None:
    return fingerprint if fingerprint is not None else getattr(cache, "fingerprint", None)


def _print_trial(varied: Sequence[str]) -> OnTrial:
    return lambda record: print(describe_trial(record, varied), flush=True)


def cross_validate(
    config,
    cache,
    folds: Folds,
    *,
    store: TrialStore | None = None,
    scope: str = "cv",
    device: str = "auto",
    progress: bool = True,
    backend: str = "serial",
    fingerprint: str | None = None,
    on_trial: OnTrial | None = None,
    ray_options: dict | None = None,
) -> CVResult:
    """K-fold CV of one configuration: zero-one loss on each held-out fold, after the last epoch.

    ``folds`` index ``cache`` (e.g. ``SplitPlan.folds``). Trials already in ``store`` are not re-run.
    ``on_trial(record)`` is called for every trial (``record["status"]`` is ``trained`` or ``stored``);
    by default a line per trial is printed when ``progress`` is on.
    """
    _check_backend(backend)
    caches = _Caches(cache)
    caches.check(config)
    checked = _check_folds(folds, len(cache.labels))
    fp = _fingerprint(cache, fingerprint)
    tasks = _cv_tasks(config, checked, scope=scope, fingerprint=fp, setting=config_setting(config), device=device)
    if on_trial is None and progress:
        on_trial = _print_trial(())
    records = _run_tasks(
        tasks,
        caches,
        store=store,
        device=device,
        progress=progress,
        backend=backend,
        on_trial=on_trial,
        ray_options=ray_options,
    )
    return _cv_result(config, tasks, records)


# --------------------------------------------------------------------------------------------------
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
    best: object  # engine.TrainConfig
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
    store: TrialStore | None,
    scope: str = "cv",
    cache_for: Callable | None = None,
    data_dir: str | Path | None = None,
    work_dir: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
    backend: str = "serial",
    fingerprint: str | None = None,
    on_trial: OnTrial | None = None,
    ray_options: dict | None = None,
    rung_epochs: Sequence[int] = (),
    keep: float = 1 / 3,
) -> GridResult:
    """Cross-validate every combination of ``grid`` (TrainConfig field -> values) on the same ``folds``.

    Successive halving with ``rung_epochs`` (e.g. ``(3,)``): every configuration is first cross-validated
    with a complete schedule of ``rung_epochs[0]`` epochs, the best ``keep`` share (at least one) moves on
    to the next rung, and so on; the last rung runs at ``base_config.epochs``. Each rung's score is a
    last-epoch CV score of a whole schedule, so rungs are honest estimates, only cheaper; ``best`` comes
    from the last rung. Without ``rung_epochs`` every configuration runs at ``base_config.epochs``.

    Grids over ``image_size`` / ``color_mode`` need a cache per setting: give ``cache_for(image_size,
    color_mode)`` or ``data_dir`` and ``work_dir``. All trials of a rung are queued at once, so the
    Ray backend runs them in parallel.
    """
    _check_backend(backend)
    configs = expand_grid(base_config, grid)
    schedule = [int(e) for e in rung_epochs] + [int(base_config.epochs)]
    if any(e < 1 for e in schedule) or schedule != sorted(set(schedule)):
        raise MuffinError(
            f"rung_epochs must increase and stay below the final epochs ({base_config.epochs}); got {list(rung_epochs)}"
        )
    if not 0.0 < keep < 1.0:
        raise MuffinError(f"keep must lie strictly between 0 and 1 (the share kept per rung), got {keep}")
    caches = _Caches(cache, cache_for, data_dir, work_dir, progress)
    for config in configs:
        caches.check(config)
    checked = _check_folds(folds, len(cache.labels))
    fp = _fingerprint(cache, fingerprint)
    varied = list(grid)
    if on_trial is None and progress:
        on_trial = _print_trial(varied)
    options = dict(store=store, device=device, progress=progress, backend=backend, on_trial=on_trial,
                   ray_options=ray_options)

    rungs: list[list[CVResult]] = []
    alive = configs
    for number, epochs in enumerate(schedule):
        rung_configs = [config.replace(epochs=epochs) for config in alive]
        per_config = [
            _cv_tasks(config, checked, scope=scope, fingerprint=fp, setting=config_setting(config), device=device)
            for config in rung_configs
        ]
        records = _run_tasks([task for tasks in per_config for task in tasks], caches, **options)
        results = [_cv_result(c, tasks, records) for c, tasks in zip(rung_configs, per_config, strict=True)]
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
    from muffin_lib.splits import inner_folds

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
    inner_folds: int = 3,
    seed: int = 0,
    store: TrialStore | None = None,
    indices=None,
    groups=None,
    cache_for: Callable | None = None,
    data_dir: str | Path | None = None,
    work_dir: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
    backend: str = "serial",
    fingerprint: str | None = None,
    on_trial: OnTrial | None = None,
    ray_options: dict | None = None,
    rung_epochs: Sequence[int] = (),
    keep: float = 1 / 3,
) -> NestedCVResult:
    """Nested CV: for each outer fold, grid-search by stratified inner CV on its training part, refit the
    winner on the whole outer-training part and score it once on the outer held-out fold.

    ``outer_folds`` is a number (stratified folds over ``indices``, default all of ``cache``) or explicit
    folds such as ``SplitPlan.folds``. ``groups`` (e.g. ``SplitPlan.groups``: one id per cached image,
    twins share one) keeps near-duplicates on one side of every inner and generated outer fold.
    ``rung_epochs`` and ``keep`` make each inner grid search a successive halving (see :func:`grid_search`).
    Inner trials are stored with scope ``nested-inner``, outer refits with ``nested-outer``.
    """
    from muffin_lib import engine

    _check_backend(backend)
    labels = np.asarray(cache.labels)
    if isinstance(outer_folds, int):
        outer = stratified_folds(labels, outer_folds, seed, indices, groups)
    else:
        outer = _check_folds(outer_folds, len(labels))
    outer_plan = fold_plan_key(outer)
    fp = _fingerprint(cache, fingerprint)
    caches = _Caches(cache, cache_for, data_dir, work_dir, progress)
    varied = list(grid)
    if on_trial is None and progress:
        on_trial = _print_trial(varied)
    options = dict(
        device=device, progress=progress, backend=backend, on_trial=on_trial, ray_options=ray_options
    )

    inner_results, chosen, outer_losses, trials, trials_outer = [], [], [], [], []
    for number, (outer_train, outer_test) in enumerate(outer):
        inner = stratified_folds(labels, inner_folds, seed + 1 + number, outer_train, groups)
        searched = grid_search(
            base_config,
            grid,
            cache,
            inner,
            store=store,
            scope="nested-inner",
            cache_for=caches.get,
            fingerprint=fp,
            rung_epochs=rung_epochs,
            keep=keep,
            **options,
        )
        winner = searched.best
        execution = engine.execution_key(winner.amp, device)
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
        )
        record = _run_tasks([task], caches, store=store, **options)[task.identity]
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
        summary=summarize_losses(outer_losses, test_train_ratio=_test_train_ratio(trials_outer)),
        chosen=chosen,
        inner=inner_results,
        trials=trials,
    )


# --------------------------------------------------------------------------------------------------
# Comparison and the one test evaluation


def compare_configs(
    config_a,
    config_b,
    cv_a: CVResult,
    cv_b: CVResult,
    n_train: int | None = None,
    n_test: int | None = None,
    confidence: float = 0.95,
) -> dict:
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
    test = corrected_resampled_ttest(
        cv_a.losses,
        cv_b.losses,
        n_train=int(round(n_train if n_train is not None else cv_a.n_train)),
        n_test=int(round(n_test if n_test is not None else cv_a.n_test)),
        confidence=confidence,
    )
    return {"mean_a": cv_a.summary["mean"], "mean_b": cv_b.summary["mean"], **test}


def compare_all(configs: dict, results: dict[str, CVResult], confidence: float = 0.95) -> list[dict]:
    """:func:`compare_configs` for every pair of ``configs`` (name -> config), in insertion order:
    dicts with ``a``, ``b`` and the corrected t-test fields."""
    names = list(configs)
    return [
        {"a": a, "b": b, **compare_configs(configs[a], configs[b], results[a], results[b], confidence=confidence)}
        for a, b in itertools.combinations(names, 2)
    ]


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
) -> dict:
    """Fit ``config`` on the whole training split and evaluate it ONCE on the test split.

    The result is stored with scope ``test``; asking again returns the stored evaluation instead of
    looking at the test split a second time. Returns zero_one_loss, n, errors, accuracy, the Wilson
    interval of the error rate (ci_low, ci_high), seconds and ``status`` (trained / stored).
    """
    from muffin_lib import engine
    from muffin_lib.metrics import binomial_interval

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
    execution = engine.execution_key(config.amp, device)
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
    )
    record = store.get(*task.identity) if store is not None else None
    status = "stored"
    if record is None:
        outcome = run_trial(
            config,
            _take(train_cache.images, train_idx),
            _take(train_cache.labels, train_idx),
            test_cache.images,
            test_cache.labels,
            seed=task.seed,
            device=device,
            progress=progress,
        )
        record = _record(task, outcome)
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


# --------------------------------------------------------------------------------------------------
# CLI: python -m muffin_lib cv


def _split_list(kind):
    def parse(text: str) -> list:
        try:
            values = [kind(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError as error:
            raise ValueError(f"{text!r}: {error}") from error
        if not values:
            raise ValueError("empty list")
        return values

    parse.__name__ = f"list of {kind.__name__}"
    return parse


def add_cv_arguments(parser) -> None:
    from muffin_lib.config import DEFAULT_DATA_DIR, DEFAULT_WORK_DIR

    add = parser.add_argument
    add("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="dataset folder (train/ and test/)")
    add("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="cache, splits.json and trials.sqlite")
    add("--model", type=_split_list(str), default=["simple_cnn"], help="model name(s), comma-separated")
    add("--lr", type=_split_list(float), default=None, help="peak learning rate(s), e.g. 1e-3,1e-4")
    add("--batch-size", type=_split_list(int), default=None, help="batch size(s), e.g. 64,128")
    add("--epochs", type=_split_list(int), default=None, help="epoch count(s); the last epoch is scored")
    add("--image-size", type=_split_list(int), default=[128], help="image size(s) in px, e.g. 64,128")
    add("--color-mode", type=_split_list(str), default=["grayscale"], help="grayscale and/or rgb")
    add("--folds", type=int, default=5, help="K of K-fold CV (the outer folds with --nested)")
    add("--seed", type=int, default=0, help="seed of the fold plan and of the models")
    add("--nested", action="store_true", help="nested CV: the risk of tuning by inner CV, then refitting")
    add("--inner-folds", type=int, default=3, help="inner folds of nested CV")
    add("--rung-epochs", type=_split_list(int), default=[], metavar="E1[,E2]",
        help="successive halving: every configuration first at these epochs, the best third goes on")
    add("--backend", choices=BACKENDS, default="serial", help="run trials one by one, or in parallel on Ray Tune")
    add("--ray-address", default=None, help="Ray: an existing cluster (default: a local instance)")
    add("--cpus-per-trial", type=float, default=1.0, help="Ray: CPUs reserved per trial")
    add("--gpus-per-trial", type=float, default=0.0, help="Ray: GPUs per trial (fractions share a GPU)")
    add("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    add("--quiet", action="store_true", help="no progress bars or training logs; one line per trial remains")
    add("--json", action="store_true", help="print the results as one JSON object on the last line")


def _trial_summary(record: dict, shown: Sequence[str]) -> dict:
    return {
        "config_key": record["config_key"],
        "fold": record["fold"],
        "scope": record["scope"],
        **{name: record["config"].get(name) for name in shown},
        "zero_one_loss": record["zero_one_loss"],
        "seconds": record.get("seconds"),
        "status": record.get("status"),
    }


def _print_table(frame) -> None:
    print(frame.to_string(index=False, float_format=lambda value: f"{value:.4f}"))


def cv_command(args) -> int:
    import logging

    from muffin_lib import engine
    from muffin_lib.cache import load_images
    from muffin_lib.config import COLOR_MODES, WorkDir
    from muffin_lib.splits import plan_for_cache

    for mode in args.color_mode:
        if mode not in COLOR_MODES:
            raise MuffinError(f"--color-mode {mode!r} is not one of {', '.join(COLOR_MODES)}")
    if args.folds < 2 or args.inner_folds < 2:
        raise MuffinError(f"--folds and --inner-folds must be >= 2, got {args.folds} and {args.inner_folds}")
    progress = not args.quiet
    if args.quiet:
        logging.getLogger("muffin_lib.engine").setLevel(logging.WARNING)
    store = TrialStore(WorkDir(args.work_dir).trials_db)
    size, mode = args.image_size[0], args.color_mode[0]
    cache = load_images(args.data_dir, args.work_dir, "train", size, mode, progress=progress)
    plan = plan_for_cache(cache, args.work_dir, n_splits=args.folds, seed=args.seed)

    base = engine.TrainConfig(model=args.model[0], image_size=size, color_mode=mode, seed=args.seed)
    grid: dict[str, list] = {"model": args.model, "image_size": args.image_size, "color_mode": args.color_mode}
    for name in ("epochs", "lr", "batch_size"):
        if getattr(args, name) is not None:
            grid[name] = getattr(args, name)
    varied = [name for name, values in grid.items() if len(values) > 1] or ["model"]
    if args.rung_epochs:
        if len(grid.get("epochs", [None])) > 1:
            raise MuffinError("--rung-epochs sets the early rungs; give --epochs one value (the last rung's)")
        if "epochs" in grid:
            base = base.replace(epochs=grid.pop("epochs")[0])
    ray_options = None
    if args.backend == "ray":
        ray_options = {
            "address": args.ray_address,
            "cpus_per_trial": args.cpus_per_trial,
            "gpus_per_trial": args.gpus_per_trial,
        }
    common = dict(
        rung_epochs=args.rung_epochs,
        store=store,
        data_dir=args.data_dir,
        work_dir=args.work_dir,
        device=args.device,
        progress=progress,
        backend=args.backend,
        on_trial=_print_trial(varied),
        ray_options=ray_options,
    )
    n_configs = math.prod(len(values) for values in grid.values())
    fixed = ", ".join(f"{name}={values[0]}" for name, values in grid.items() if name not in varied)
    print(f"trial store: {store.path} ({len(store)} trials stored)", flush=True)
    print(f"{cache.images.shape[0]} training images; fixed: {fixed or 'nothing'}", flush=True)

    if args.nested:
        print(
            f"nested CV: {n_configs} configurations x {args.inner_folds} inner folds, "
            f"inside {args.folds} outer folds",
            flush=True,
        )
        nested = nested_cv(
            base, grid, cache, outer_folds=plan.folds, inner_folds=args.inner_folds, seed=args.seed,
            groups=plan.groups, **common
        )
        print("\nconfiguration chosen by inner CV in each outer fold, and its outer held-out zero-one loss:")
        _print_table(nested.table[["outer_fold", *varied, "inner_mean", "zero_one_loss", "n_test"]])
        risk = nested.summary
        print(
            f"\nnested-CV risk (zero-one loss): {risk['mean']:.4f}, se {risk['se']:.4f}, "
            f"{risk['interval']} interval [{risk['ci_low']:.4f}, {risk['ci_high']:.4f}] over {risk['n']} outer folds"
        )
        if args.json:
            outcome = {
                "nested": True,
                "trials": [_trial_summary(trial, varied) for trial in nested.trials],
                "table": nested.chosen,
                "risk": nested.summary,
            }
            print(json.dumps(_jsonable(outcome)))
        return 0

    n_trials = n_configs * len(plan.folds)
    print(f"grid: {n_configs} configurations x {len(plan.folds)} folds = {n_trials} trials", flush=True)
    result = grid_search(base, grid, cache, plan.folds, **common)
    print(f"\nzero-one loss over the folds ({result.best_result.summary['interval']} interval):")
    _print_table(result.table[["rung", "epochs", *[v for v in varied if v != "epochs"], *SUMMARY_COLUMNS, "n_folds", "seconds"]])
    best = ", ".join(f"{name}={getattr(result.best, name)}" for name in varied)
    print(f"\nbest: {best} (mean zero-one loss {result.best_result.summary['mean']:.4f})")
    if args.json:
        outcome = {
            "trials": [_trial_summary(trial, varied) for trial in result.trials],
            "table": json.loads(result.table.to_json(orient="records")),
            "best": {**{name: getattr(result.best, name) for name in varied}, "config": result.best.to_dict()},
        }
        print(json.dumps(_jsonable(outcome)))
    return 0
