"""``RunOptions``: where and how the trials of ``cross_validate``, ``grid_search`` and ``nested_cv`` run; what
is estimated (configuration, grid, cache, folds, twin groups, scope) stays in each function's arguments."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from muffin_lib.errors import MuffinError

if TYPE_CHECKING:
    from muffin_lib.selection.trial import OnTrial
    from muffin_lib.selection.trial_store import TrialStore

BACKENDS = ("serial", "ray")


def check_workers(workers) -> int | str:
    """``workers`` itself when it is a number >= 1 or "auto" (``RunOptions.workers``), else a clear error."""
    number = isinstance(workers, int) and not isinstance(workers, bool)
    if workers != "auto" and not (number and workers >= 1):
        raise MuffinError(f"workers must be a number >= 1 or 'auto', got {workers!r}")
    return workers


@dataclass(frozen=True)
class RunOptions:
    """Run settings shared by cross_validate, grid_search and nested_cv; only ``device`` (its resolved type
    and precision) is part of a trial's key.

    * ``store``: the :class:`~muffin_lib.selection.trial_store.TrialStore` trials are read from and written to
      as each ends (None: nothing stored or resumed); ``device``: ``auto`` | ``cpu`` | ``cuda[:N]`` | ``mps``;
    * ``backend``: ``serial`` or ``ray`` (Ray Tune), with ``ray_options`` (the fields of ``RaySettings``);
    * ``workers`` (serial): trials trained at once in worker processes, a number or "auto"
      (``processes.resolve_workers``); 1 trains them one after another here, with progress bars;
    * ``progress``: bars and training logs, and a line per trial when ``on_trial`` is None;
    * ``on_trial(record)``: called for every trial (``record["status"]``: ``trained`` or ``stored``);
    * ``cache_for(image_size, color_mode) -> ImageCache``, or ``data_dir`` and ``work_dir``: where the caches
      of a grid over ``image_size`` / ``color_mode`` come from.
    """

    store: TrialStore | None = None
    device: str = "auto"
    backend: str = "serial"
    workers: int | str = 1
    ray_options: Mapping | None = None
    progress: bool = True
    on_trial: OnTrial | None = None
    cache_for: Callable | None = None
    data_dir: str | Path | None = None
    work_dir: str | Path | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise MuffinError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        check_workers(self.workers)

    def replace(self, **changes) -> RunOptions:
        """A copy with ``changes`` (the options are frozen)."""
        return dataclasses.replace(self, **changes)

    def reporting(self, varied: Sequence[str] = ()) -> RunOptions:
        """These options with ``on_trial`` set: the given one, else (with ``progress``) a printed line per
        trial naming the ``varied`` grid parameters."""
        if self.on_trial is not None or not self.progress:
            return self
        from muffin_lib.selection.trial import print_trial

        return self.replace(on_trial=print_trial(varied))
