"""Run a batch of trials on this machine (one after another, or several at once in worker processes) or on
Ray Tune, skipping those the trial store already holds and committing each as it finishes; the caches a
batch reads. The one place that chooses a backend (so ``ray_backend`` and the trial code never import each
other)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from muffin_lib.errors import MuffinError
from muffin_lib.selection import processes
from muffin_lib.selection.options import RunOptions
from muffin_lib.selection.trial import TrialTask, cache_setting, config_setting, run_task


class TrialCaches:
    """The caches a grid needs, one per (image_size, color_mode), all in the same record order (the folds
    index every one of them): ``cache`` itself, and the others from ``options.cache_for`` or loaded from
    ``options.data_dir`` / ``options.work_dir``."""

    def __init__(self, cache, options: RunOptions):
        self.base = cache
        self._by_setting = {cache_setting(cache): cache}
        cache_for = options.cache_for
        if cache_for is None and options.data_dir is not None and options.work_dir is not None:

            def cache_for(image_size, color_mode):
                from muffin_lib.data.cache import load_images

                return load_images(options.data_dir, options.work_dir, "train", image_size, color_mode,
                                   progress=options.progress)

        self._cache_for = cache_for

    def get(self, setting: tuple[int, str]):
        """The cache of ``setting`` (image_size, color_mode), loaded once and checked to list the same images."""
        if setting in self._by_setting:
            return self._by_setting[setting]
        if self._cache_for is None:
            have = cache_setting(self.base)
            raise MuffinError(
                f"configuration wants image_size={setting[0]}, color_mode={setting[1]!r} but the cache holds "
                f"{have[0]} px {have[1]!r} images; pass RunOptions(cache_for=(image_size, color_mode) -> ImageCache), "
                "or RunOptions(data_dir=..., work_dir=...), so the matching cache can be loaded"
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
        """Fail early when the cache ``config`` trains on cannot be had."""
        self.get(config_setting(config))


def run_tasks(
    tasks: Sequence[TrialTask], caches: TrialCaches, options: RunOptions
) -> dict[tuple[str, int, str], dict]:
    """Run the tasks not yet in ``options.store`` on ``options.backend``; each result is committed as soon
    as its trial ends and reported to ``options.on_trial``. Returns every task's record by its identity."""
    store, on_trial = options.store, options.on_trial
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
    on_ray = options.backend == "ray"
    workers = 1 if on_ray else processes.resolve_workers(options.workers, options.device, len(pending))
    if on_ray or workers > 1:
        needed = {setting: caches.get(setting) for setting in {t.setting for t in pending.values()}}
        if on_ray:
            from muffin_lib.selection import ray_backend  # imports trial only: no cycle

            ray_backend.run_tasks(list(pending.values()), needed, on_record=finish, device=options.device,
                                  **(options.ray_options or {}))
        else:
            processes.run_tasks(list(pending.values()), needed, device=options.device, workers=workers,
                                on_record=finish, say=print if options.progress else None)
        return records
    for task in pending.values():
        cache = caches.get(task.setting)
        finish(run_task(task, cache.images, cache.labels, device=options.device, progress=options.progress))
    return records
