"""The study's model-selection budgets: the one home of what notebooks 06-07 and the ``cv`` CLI run.

``FULL`` (profile ``full``) selects and estimates at the recipe the study ships: the image size and epochs
of ``recipe.TrainConfig``, so notebook 07's CV risk of each architecture is the risk of exactly the models
notebooks 03-05 train, and the last rung of 06's grid runs that recipe too. Successive halving keeps the
grid affordable: every configuration first trains a complete 3-epoch schedule on every fold, the best
third (2 of 6) then the full schedule. Nested CV repeats 06's procedure inside each outer fold with the same
halving and the same K (5 inner folds), so it estimates the procedure 06 really runs. On a GPU this is
minutes; on a 2-core CPU it is hours (run it in the background: the trial store resumes it).

``QUICK`` (profile ``quick``, the default on a CPU) is the laptop budget: the same recipe at 64 px and 8
epochs for 06-07, 2 inner folds for nested CV, so the whole series fits about an hour on 2 cores. Its CV
risks describe 64 px / 8-epoch models, not the shipped ones; every table and summary line it produces says
so (``SelectionBudget.label``), and ``benchmarks/README.md`` measures how well it agrees with ``FULL``.
The other training settings (colour, optimiser, augmentation, label smoothing, peak lr, batch size) are the
recipe of ``recipe.TrainConfig`` in both.
"""

from __future__ import annotations

from dataclasses import dataclass

from muffin_lib.data.splits import N_SPLITS
from muffin_lib.errors import MuffinError
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
        """What every table header and summary line of this budget says, e.g. "128 px, 15 epochs (profile
        full: the deployed recipe)"."""
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
    """The label of whatever ran: a named budget's, or the plain settings with how they compare to the recipe."""
    named = budget_for(image_size, epochs)
    if named is not None:
        return named.label
    if (image_size, epochs) == (_RECIPE.image_size, _RECIPE.epochs):
        return f"{image_size} px, {plural(epochs, 'epoch')} (the deployed recipe)"
    return (f"{image_size} px, {plural(epochs, 'epoch')} "
            f"(not the deployed {_RECIPE.image_size} px / {plural(_RECIPE.epochs, 'epoch')})")


def get_budget(profile: str) -> SelectionBudget:
    try:
        return BUDGETS[profile]
    except KeyError:
        raise MuffinError(f"no selection budget for profile {profile!r}; choose one of {sorted(BUDGETS)}") from None
