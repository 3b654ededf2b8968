"""Run a batch of trials on this machine (one after another, or in worker processes) or on Ray Tune,
skipping those the trial store holds and committing each as it ends; the one place that picks a backend
(so ``ray_backend`` and the trial code never import each other). Also the caches a batch reads."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from muffin_lib.errors import MuffinError
from muffin_lib.selection import processes
from muffin_lib.selection.options import RunOptions
from muffin_lib.selection.trial import TrialTask, cache_setting, config_setting, run_task


class TrialCaches:
    """The caches a grid needs, one per (image_size, color_mode), all in the same record order (the folds
    index every one): ``cache`` itself, the others from ``options.cache_for`` or ``options.data_dir``."""

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
        """The cache of ``setting`` (image_size, color_mode), loaded once, checked to list the same images."""
        if setting in self._by_setting:
            return self._by_setting[setting]
        if self._cache_for is None:
            have = cache_setting(self.base)
            raise MuffinError(
                f"configuration wants image_size={setting[0]}, color_mode={setting[1]!r} but the cache holds "
                f"{have[0]} px {have[1]!r} images; pass RunOptions(cache_for=(image_size, color_mode) -> "
                "ImageCache), or RunOptions(data_dir=..., work_dir=...), so the matching cache can be loaded"
            )
        cache = self._cache_for(*setting)
        if cache_setting(cache) != setting:
            raise MuffinError(f"cache_for{setting} returned a cache of {cache_setting(cache)} images")
        same_labels = np.array_equal(np.asarray(cache.labels), np.asarray(self.base.labels))
        if list(cache.relpaths) != list(self.base.relpaths) or not same_labels:
            raise MuffinError(
                f"the {setting[0]} px {setting[1]} cache lists other images (or another order) than the "
                f"{cache_setting(self.base)} cache, so the folds would not match; load both from the same "
                "data_dir"
            )
        self._by_setting[setting] = cache
        return cache

    def check(self, config) -> None:
        """Fail early when the cache ``config`` trains on cannot be had."""
        self.get(config_setting(config))


def run_tasks(tasks: Sequence[TrialTask], caches: TrialCaches, options: RunOptions) -> dict[tuple, dict]:
    """Run the tasks not yet in ``options.store`` on ``options.backend``, committing and reporting
    (``options.on_trial``) each as it ends. Returns every task's record by its identity."""
    store, on_trial = options.store, options.on_trial
    records: dict[tuple[str, int, str], dict] = {}
    pending: dict[tuple[str, int, str], TrialTask] = {}
    for task in tasks:
        stored = store.get(*task.identity) if store is not None else None
        if stored is None:
            pending.setdefault(task.identity, task)
            continue
        records[task.identity] = stored = {**stored, "status": "stored"}
        if on_trial is not None:
            on_trial(stored)

    def finish(record: dict) -> None:
        if store is not None:
            store.add_record(record)
        record = {**record, "status": "trained"}
        records[(record["config_key"], record["fold"], record["scope"])] = record
        if on_trial is not None:
            on_trial(record)

    if not pending:
        return records
    on_ray, device = options.backend == "ray", options.device
    workers = 1 if on_ray else processes.resolve_workers(options.workers, device, len(pending))
    if not on_ray and workers == 1:
        for task in pending.values():
            cache = caches.get(task.setting)
            finish(run_task(task, cache.images, cache.labels, device=device, progress=options.progress))
        return records
    needed = {setting: caches.get(setting) for setting in {task.setting for task in pending.values()}}
    if on_ray:
        from muffin_lib.selection import ray_backend  # imports trial only: no cycle

        settings = ray_backend.RaySettings(**(options.ray_options or {}))
        ray_backend.run_tasks(list(pending.values()), needed, on_record=finish, device=device,
                              settings=settings)
    else:
        processes.run_tasks(list(pending.values()), needed, device=device, workers=workers, on_record=finish,
                            say=print if options.progress else None)
    return records
