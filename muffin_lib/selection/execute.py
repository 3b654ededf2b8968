"""Run a batch of trials, serially or on Ray Tune, skipping those the trial store already holds and
committing each as it finishes. The one place that chooses a backend (so ``ray_backend`` and the trial
code never import each other)."""

from __future__ import annotations

from collections.abc import Sequence

from muffin_lib.selection.trial import OnTrial, TrialTask, _Caches, _check_backend, run_task
from muffin_lib.selection.trials import TrialStore


def _run_tasks(
    tasks: Sequence[TrialTask],
    caches: _Caches,
    *,
    store: TrialStore | None,
    device: str,
    progress: bool,
    backend: str,
    on_trial: OnTrial | None,
    ray_options: dict | None,
) -> dict[tuple[str, int, str], dict]:
    """Run the tasks not yet in ``store``; each result is committed as soon as its trial ends."""
    _check_backend(backend)
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
    if backend == "ray":
        from muffin_lib.selection import ray_backend  # imports trial only: no cycle

        needed = {setting: caches.get(setting) for setting in {t.setting for t in pending.values()}}
        ray_backend.run_tasks(list(pending.values()), needed, on_record=finish, device=device, **(ray_options or {}))
    else:
        for task in pending.values():
            cache = caches.get(task.setting)
            finish(run_task(task, cache.images, cache.labels, device=device, progress=progress))
    return records


