"""muffin_lib: the library behind the muffin-lab notebooks.

Data flows one way, one module per step:
fetch/extract -> scan (audit) -> splits -> cache -> augment -> models -> engine (fit/evaluate)
-> selection (cross-validation, grid, trial store) -> plots/runner (figures and summary).
The CLI (``python -m muffin_lib``) and the notebooks are two thin faces on the same functions.
"""

__version__ = "0.1.0"
