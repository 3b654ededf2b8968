"""Model selection: K-fold cross-validation, grid search, nested CV, paired comparison, one test evaluation.

Rules that keep the estimates honest:

* every configuration of a grid is scored on the SAME folds (indices into the cache order);
* each fold trains a fresh model, seeded from ``config.seed`` and the fold number, on the other K-1
  folds (normalisation and augmentation come from those only, inside ``loop.fit``);
* the held-out fold is only evaluated, once, with the model after the configured number of epochs.
  No epoch is chosen on it; when ``early_stopping_patience`` is set, the early-stopping split is
  carved out of the training folds, twin-grouped when the split plan's ``groups`` are passed;
* the test split is scored only by ``evaluation.evaluate_candidates`` (notebook 09), past
  ``test_looks.gate``.

Every finished trial is committed to the :class:`~muffin_lib.selection.trial_store.TrialStore` at once, so an
interrupted run resumes where it stopped; trials already stored are never trained again. Where and how
trials run (store, device, backend, progress, ...) is one :class:`RunOptions`, passed as ``options=`` to
:func:`cross_validate`, :func:`grid_search` and :func:`nested_cv`.
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
    run_trial,
    store_fold,
)
from muffin_lib.selection.trial_store import TrialStore

__all__ = [
    "BACKENDS",
    "EARLY_STOPPING_FRACTION",
    "SUMMARY_COLUMNS",
    "CVResult",
    "GridResult",
    "NestedCVResult",
    "RunOptions",
    "TrialStore",
    "TrialTask",
    "compare_all",
    "compare_configs",
    "cross_validate",
    "cross_validate_each",
    "cv_tasks",
    "describe_trial",
    "expand_grid",
    "fold_seed",
    "grid_search",
    "nested_cv",
    "run_task",
    "run_trial",
    "store_fold",
    "stratified_folds",
]
