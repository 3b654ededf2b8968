"""The study's model-selection budget: the one home of what notebooks 06-07 and the ``cv`` CLI run by default.

Why these numbers. Selection needs a *ranking* of configurations and architectures, each scored on the
same 5 twin-grouped folds; it does not need the final model's resolution. The full study has to fit an
hour on a 2-core laptop CPU (issue 9), and at 128 px the 5-fold CV of deeper_cnn alone costs about 47
CPU minutes. At 64 px a training step costs a quarter, so the three architectures' CV, the grid and
nested CV fit beside the 128 px trainings of notebooks 03-05 and 08. The other training settings
(colour, optimiser, augmentation, label smoothing, peak lr, batch size) are the recipe of
``engine.TrainConfig``. On a GPU, pass ``image_size = 128`` to 06 and 07 to select at full resolution.

The grid is 3 peak learning rates x 2 batch sizes. Successive halving (``rung_epochs``): every
configuration first trains a complete 2-epoch schedule on every fold; the best third (2 of 6) then
trains the full 8-epoch schedule. Nested CV uses 2 inner folds, enough to pick
among the grid's configurations (its decision), and the same halving.
"""

from __future__ import annotations

from dataclasses import dataclass

from muffin_lib.data.splits import N_SPLITS


@dataclass(frozen=True)
class SelectionBudget:
    image_size: int = 64
    epochs: int = 8  # of the full schedule (the last rung)
    learning_rates: tuple[float, ...] = (1e-3, 3e-3, 1e-2)  # peak learning rates of the one-cycle schedule
    batch_sizes: tuple[int, ...] = (64, 128)  # 32 costs twice the steps on a CPU
    rung_epochs: tuple[int, ...] = (2,)
    n_splits: int = N_SPLITS
    inner_splits: int = 2


SELECTION = SelectionBudget()
