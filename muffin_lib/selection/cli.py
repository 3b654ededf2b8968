"""``python -m muffin_lib cv``: grid search (or nested CV) scored by twin-grouped K-fold CV, resumable."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from muffin_lib.errors import MuffinError
from muffin_lib.files import jsonable
from muffin_lib.selection.options import BACKENDS, RunOptions
from muffin_lib.selection.search import NestedFolds, grid_search, nested_cv
from muffin_lib.selection.trial import SUMMARY_COLUMNS, print_trial
from muffin_lib.selection.trial_store import TrialStore
from muffin_lib.text import plural


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


def _workers(text: str) -> int | str:
    return text if text == "auto" else int(text)  # RunOptions checks the number


_workers.__name__ = "number or auto"


def add_cv_arguments(parser) -> None:
    from muffin_lib.config import COLOR_MODES, DEFAULT_DATA_DIR, DEFAULT_WORK_DIR
    from muffin_lib.selection.budget import SELECTION
    from muffin_lib.training.models import MODEL_NAMES
    from muffin_lib.training.recipe import TrainConfig

    recipe = TrainConfig()
    add = parser.add_argument
    add("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
        help="dataset folder (train/ and test/) (default: %(default)s)")
    add("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
        help="cache, splits.json and trials.sqlite (default: %(default)s)")
    add("--model", type=_split_list(str), default=["simple_cnn"],
        help=f"one or more of {', '.join(MODEL_NAMES)}, comma-separated (default: simple_cnn)")
    add("--lr", type=_split_list(float), default=None,
        help=f"peak learning rate(s), e.g. 1e-3,1e-4 (default: the recipe's, {recipe.lr:g})")
    add("--batch-size", type=_split_list(int), default=None,
        help=f"batch size(s), e.g. 64,128 (default: the recipe's, {recipe.batch_size})")
    add("--epochs", type=_split_list(int), default=[SELECTION.epochs],
        help="epoch count(s), a grid over them without --rung-epochs; the last epoch is scored (default: the "
        f"deployed recipe's, {SELECTION.epochs}; the quick budget: 8)")
    add("--image-size", type=_split_list(int), default=[SELECTION.image_size],
        help=f"image size(s) in px, e.g. 64,128 (default: the deployed recipe's, {SELECTION.image_size}; "
        "the quick budget: 64)")
    add("--color-mode", type=_split_list(str), default=[recipe.color_mode], metavar="MODE[,MODE]",
        help=f"one or more of {', '.join(COLOR_MODES)}, comma-separated (default: {recipe.color_mode})")
    add("--folds", type=int, default=SELECTION.n_splits,
        help="K of K-fold CV (the outer folds with --nested) (default: %(default)s)")
    add("--seed", type=int, default=0, help="seed of the fold plan and of the models (default: %(default)s)")
    add("--nested", action="store_true", help="nested CV: the risk of tuning by inner CV, then refitting")
    add("--inner-folds", type=int, default=SELECTION.inner_splits,
        help="inner folds of nested CV (default: as many as the outer search uses; the quick budget: 2)")
    add("--rung-epochs", type=_split_list(int), default=[], metavar="E1[,E2]",
        help="successive halving: every configuration first at these epochs, the best third goes on "
        "(default: none: every configuration trains --epochs)")
    add("--backend", choices=BACKENDS, default="serial",
        help="serial: run trials on this machine; ray: in parallel on Ray Tune (default: %(default)s)")
    add("--workers", type=_workers, default="auto",
        help="serial backend: trials trained at once in worker processes; auto (default) and 1: one after "
        "another, with progress bars (more is unmeasured on a GPU and 1.09x on a 2-core CPU)")
    add("--ray-address", default=None, help="Ray: an existing cluster (default: a local instance)")
    add("--cpus-per-trial", type=float, default=1.0,
        help="Ray: CPUs reserved per trial (default: %(default)s)")
    add("--gpus-per-trial", type=float, default=0.0,
        help="Ray: GPUs per trial, fractions share a GPU (default: %(default)s)")
    add("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: %(default)s)")
    add("--quiet", action="store_true", help="no progress bars or training logs; one line per trial remains")
    add("--json", action="store_true", help="print the results as one JSON object on the last line")


def _trial_summary(record: dict, shown: Sequence[str]) -> dict:
    return {"config_key": record["config_key"], "fold": record["fold"], "scope": record["scope"],
            **{name: record["config"].get(name) for name in shown}, "zero_one_loss": record["zero_one_loss"],
            "seconds": record.get("seconds"), "status": record.get("status")}


def _print_table(frame) -> None:
    print(frame.to_string(index=False, float_format=lambda value: f"{value:.4f}"))


def _search_space(args) -> tuple:
    """``(base config, grid, varied)`` of the flags; with --rung-epochs, --epochs is the last rung's."""
    from muffin_lib.selection.budget import SELECTION
    from muffin_lib.training import recipe

    if "transfer" in args.model and len(args.model) > 1:
        raise MuffinError("--model: the transfer model trains at its own recipe (pretrained, fewer epochs, a "
                          "lower lr); cross-validate it alone: --model transfer")
    own = recipe.recipe_for(args.model[0])  # the transfer model starts from its pretrained recipe
    if own.pretrained:  # the CNNs' default size and epochs are not its recipe's
        args.epochs = [own.epochs] if args.epochs == [SELECTION.epochs] else args.epochs
        args.image_size = [own.image_size] if args.image_size == [SELECTION.image_size] else args.image_size
    base = own.replace(model=args.model[0], image_size=args.image_size[0], color_mode=args.color_mode[0],
                       seed=args.seed)
    grid: dict[str, list] = {"model": args.model, "image_size": args.image_size,
                             "color_mode": args.color_mode}
    for name in ("epochs", "lr", "batch_size"):
        if getattr(args, name) is not None:
            grid[name] = getattr(args, name)
    varied = [name for name, values in grid.items() if len(values) > 1] or ["model"]
    if args.rung_epochs:
        if len(grid.get("epochs", [None])) > 1:
            raise MuffinError("--rung-epochs sets the early rungs; give --epochs one value (the last rung's)")
        if "epochs" in grid:
            base = base.replace(epochs=grid.pop("epochs")[0])
    return base, grid, varied


def _run_options(args, store: TrialStore, varied: list[str]) -> RunOptions:
    ray = {"address": args.ray_address, "cpus_per_trial": args.cpus_per_trial,
           "gpus_per_trial": args.gpus_per_trial}
    return RunOptions(store=store, device=args.device, backend=args.backend, workers=args.workers,
                      ray_options=ray if args.backend == "ray" else None, progress=not args.quiet,
                      on_trial=print_trial(varied),  # one line per trial, --quiet or not
                      data_dir=args.data_dir, work_dir=args.work_dir)


def _nested(args, space: tuple, cache, plan, options: RunOptions) -> dict:
    base, grid, varied = space
    print(f"nested CV: {plural(math.prod(map(len, grid.values())), 'configuration')} x {args.inner_folds} "
          f"inner folds, inside {args.folds} outer folds", flush=True)
    nested = nested_cv(base, grid, cache, NestedFolds(plan.folds, args.inner_folds, args.seed),
                       groups=plan.groups, rung_epochs=args.rung_epochs, options=options)
    print("\nconfiguration chosen by inner CV in each outer fold, and its outer held-out zero-one loss:")
    _print_table(nested.table[["outer_fold", *varied, "inner_mean", "zero_one_loss", "n_test"]])
    risk = nested.summary
    print(f"\nnested-CV risk (zero-one loss): {risk['mean']:.4f}, se {risk['se']:.4f}, {risk['interval']} "
          f"interval [{risk['ci_low']:.4f}, {risk['ci_high']:.4f}] over {risk['n']} outer folds")
    return {"nested": True, "trials": [_trial_summary(trial, varied) for trial in nested.trials],
            "table": nested.chosen, "risk": risk}


def _grid(args, space: tuple, cache, plan, options: RunOptions) -> dict:
    base, grid, varied = space
    n_configs = math.prod(map(len, grid.values()))
    n_trials = n_configs * len(plan.folds)
    print(f"grid: {plural(n_configs, 'configuration')} x {len(plan.folds)} folds = {n_trials} trials",
          flush=True)
    result = grid_search(base, grid, cache, plan.folds, groups=plan.groups, rung_epochs=args.rung_epochs,
                         options=options)
    summary = result.best_result.summary
    print(f"\nzero-one loss over the folds ({summary['interval']} interval):")
    shown = [v for v in varied if v != "epochs"]
    _print_table(result.table[["rung", "epochs", *shown, *SUMMARY_COLUMNS, "n_folds", "seconds"]])
    best = {name: getattr(result.best, name) for name in varied}
    named = ", ".join(f"{name}={value}" for name, value in best.items())
    print(f"\nbest: {named} (mean zero-one loss {summary['mean']:.4f})")
    return {"trials": [_trial_summary(trial, varied) for trial in result.trials],
            "table": json.loads(result.table.to_json(orient="records")),
            "best": {**best, "config": result.best.to_dict()}}


def cv_command(args) -> int:
    import logging

    from muffin_lib.config import COLOR_MODES, WorkDir
    from muffin_lib.data.cache import load_images
    from muffin_lib.data.splits import plan_for_cache

    for mode in args.color_mode:
        if mode not in COLOR_MODES:
            raise MuffinError(f"--color-mode {mode!r} is not one of {', '.join(COLOR_MODES)}")
    if args.folds < 2 or args.inner_folds < 2:
        raise MuffinError(f"--folds and --inner-folds must be >= 2, got {args.folds} and {args.inner_folds}")
    if args.quiet:
        logging.getLogger("muffin_lib.training.loop").setLevel(logging.WARNING)
    base, grid, varied = _search_space(args)  # a bad combination stops here, before any work
    store = TrialStore(WorkDir(args.work_dir).trials_db)
    cache = load_images(args.data_dir, args.work_dir, "train", args.image_size[0], args.color_mode[0],
                        progress=not args.quiet)
    plan = plan_for_cache(cache, args.work_dir, n_splits=args.folds, seed=args.seed)
    options = _run_options(args, store, varied)
    fixed = ", ".join(f"{name}={values[0]}" for name, values in grid.items() if name not in varied)
    print(f"trial store: {store.path} ({plural(len(store), 'trial')} stored)", flush=True)
    print(f"{plural(cache.images.shape[0], 'training image')}; fixed: {fixed or 'nothing'}", flush=True)
    outcome = (_nested if args.nested else _grid)(args, (base, grid, varied), cache, plan, options)
    if args.json:
        print(json.dumps(jsonable(outcome)))
    return 0
