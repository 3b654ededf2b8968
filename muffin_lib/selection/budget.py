"""The study's model-selection budgets: what notebooks 06-07 and the ``cv`` CLI run.

``FULL`` (profile ``full``) selects and estimates at the shipped recipe (its image size and epochs), so 07's
CV risks are those of the models 03-05 train; successive halving (every configuration first at 3 epochs,
the best third then the full schedule) keeps the grid affordable, and nested CV repeats it with 5 inner
folds. ``QUICK`` (profile ``quick``: 64 px, 8 epochs, 2 inner folds) fits about an hour on a 2-core CPU;
its tables say so (``SelectionBudget.label``). The other training settings are the recipe's in both. The
transfer model has one recipe in both, ``recipe.TRANSFER_RECIPE``: a linear probe costs seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from muffin_lib.data.splits import N_SPLITS
from muffin_lib.text import plural
from muffin_lib.training.recipe import TrainConfig

_RECIPE = TrainConfig()


@dataclass(frozen=True)
class SelectionBudget:
    profile: str  # the notebook/runner profile that runs it
    image_size: int
    epochs: int  # of the full schedule (the last rung)
    rung_epochs: tuple[int, ...]  # successive halving: the early rungs' complete schedules
    inner_splits: int  # inner folds of nested CV
    learning_rates: tuple[float, ...] = (1e-3, 3e-3, 1e-2)  # peak learning rates of the one-cycle schedule
    batch_sizes: tuple[int, ...] = (64, 128)  # 32 costs twice the steps on a CPU
    n_splits: int = N_SPLITS

    @property
    def deployed(self) -> bool:
        """Whether this budget selects at the recipe the study ships (image size and epochs)."""
        return (self.image_size, self.epochs) == (_RECIPE.image_size, _RECIPE.epochs)

    @property
    def label(self) -> str:
        """What every table header and summary line of this budget says."""
        what = "the deployed recipe" if self.deployed else (
            f"cheaper than the deployed {_RECIPE.image_size} px / {plural(_RECIPE.epochs, 'epoch')}"
        )
        return f"{self.image_size} px, {plural(self.epochs, 'epoch')} (profile {self.profile}: {what})"


FULL = SelectionBudget("full", _RECIPE.image_size, _RECIPE.epochs, rung_epochs=(3,), inner_splits=N_SPLITS)
QUICK = SelectionBudget("quick", 64, 8, rung_epochs=(2,), inner_splits=2)
BUDGETS = {budget.profile: budget for budget in (FULL, QUICK)}
SELECTION = FULL  # the default of the notebooks' parameters and of the cv CLI


def budget_for(image_size: int, epochs: int) -> SelectionBudget | None:
    """The named budget with this image size and epochs, or None (settings of the user's own)."""
    return next((b for b in BUDGETS.values() if (b.image_size, b.epochs) == (image_size, epochs)), None)


def settings_label(image_size: int, epochs: int) -> str:
    """The label of whatever ran: a named budget's, or the settings and how they compare to the recipe."""
    named = budget_for(image_size, epochs)
    if named is not None:
        return named.label
    if (image_size, epochs) == (_RECIPE.image_size, _RECIPE.epochs):
        return f"{image_size} px, {plural(epochs, 'epoch')} (the deployed recipe)"
    return (f"{image_size} px, {plural(epochs, 'epoch')} "
            f"(not the deployed {_RECIPE.image_size} px / {plural(_RECIPE.epochs, 'epoch')})")
