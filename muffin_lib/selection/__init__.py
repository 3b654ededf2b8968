"""Model selection: K-fold cross-validation, grid search, nested CV, paired comparison, one test evaluation.

Every configuration of a grid is scored on the same folds; each fold trains a fresh model (seeded from
``config.seed`` and the fold) on the other K-1 folds, which alone give its normalisation, augmentation and
any early-stopping split, and is scored once on the held-out fold after the configured epochs. The test
split is scored only by ``evaluation.evaluate_candidates`` (notebook 09), past ``test_looks.gate``. Each
finished trial is committed to the :class:`TrialStore` at once, so an interrupted run resumes where it
stopped; where and how trials run is one :class:`RunOptions`, passed as ``options=``.
"""

from muffin_lib.selection.cv import (
    CVResult,
    compare_all,
    compare_configs,
    cross_validate,
    cross_validate_each,
    cv_tasks,
)
from muffin_lib.selection.options import BACKENDS, RunOptions
from muffin_lib.selection.search import (
    GridResult,
    NestedCVResult,
    NestedFolds,
    expand_grid,
    grid_search,
    nested_cv,
    stratified_folds,
)
from muffin_lib.selection.trial import (
    EARLY_STOPPING_FRACTION,
    SUMMARY_COLUMNS,
    TrialTask,
    describe_trial,
    fold_seed,
    run_task,
    store_fold,
)
from muffin_lib.selection.trial_store import TrialStore

__all__ = [
    "BACKENDS", "EARLY_STOPPING_FRACTION", "SUMMARY_COLUMNS", "CVResult", "GridResult", "NestedCVResult",
    "NestedFolds", "RunOptions", "TrialStore", "TrialTask", "compare_all", "compare_configs",
    "cross_validate", "cross_validate_each", "cv_tasks", "describe_trial", "expand_grid", "fold_seed",
    "grid_search", "nested_cv", "run_task", "store_fold", "stratified_folds",
]
