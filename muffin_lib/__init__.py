"""muffin_lib: the library behind the muffin-lab notebooks.

Data flows one way, and the sub-packages follow it:
``data`` (fetch, audit, twins, splits, decoded cache) -> ``training`` (models, augmentation, fit and
evaluate, train/predict) -> ``selection`` (cross-validation, grid search, nested CV, trial store, the
one test evaluation) -> ``study`` (notebook support, findings, figures, the runner).
The CLI (``python -m muffin_lib``) and the notebooks are two thin faces on the same functions.
"""

__version__ = "0.1.0"
