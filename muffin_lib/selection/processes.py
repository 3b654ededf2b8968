"""Several trials at once on this machine (``RunOptions.workers``): spawned worker processes, each training
one trial at a time on the same device, with the cache images in shared memory.

Why: on a GPU a small trial is bound by Python's per-step dispatch, and several processes fill the gaps
between each other's kernels (unmeasured, so it is asked for with a number); on a 2-core CPU it gains little
(benchmarks/README.md, "Trials at once"). The workers share the parent's torch threads, and take more once
fewer trials are left than workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import torch

from muffin_lib.errors import MuffinError
from muffin_lib.selection.options import check_workers
from muffin_lib.text import plural

_WORKER: dict = {}  # the worker process's state, set once by _start_worker


def resolve_workers(requested: int | str, device: str | torch.device, pending: int) -> int:
    """How many of ``pending`` trials to train at once (1: one after another in this process). "auto" is 1
    until a measurement shows more is faster: two workers on a 2-core CPU were only 1.09x faster, for twice
    the memory, and no GPU has measured it."""
    workers = check_workers(requested)
    return max(1, min(1 if workers == "auto" else int(workers), int(pending)))


def _start_worker(arrays: dict, device: str, threads: int, workers: int, unfinished) -> None:
    _WORKER.update(arrays=arrays, device=device, threads=threads, workers=workers, unfinished=unfinished)
    torch.set_num_threads(max(1, threads // workers))


def _rebalance(_record: dict | None = None) -> None:
    """Take this worker's share of the threads (an ``on_epoch`` of ``fit``): equal among the busy workers.
    The count only falls, so they never ask for more threads than there are cores (OpenMP slows then)."""
    busy = max(1, min(_WORKER["workers"], _WORKER["unfinished"].value))
    share = max(1, _WORKER["threads"] // busy)
    if torch.get_num_threads() != share:
        torch.set_num_threads(share)


def _train(task) -> dict:
    from muffin_lib.selection.trial import run_task

    try:
        _rebalance()
        images, labels = _WORKER["arrays"][task.setting]
        return run_task(task, images, labels, device=_WORKER["device"], progress=False, on_epoch=_rebalance)
    finally:
        unfinished = _WORKER["unfinished"]
        with unfinished.get_lock():
            unfinished.value -= 1


def run_tasks(tasks: Sequence, caches: dict, *, device: str, workers: int,
              on_record: Callable[[dict], None], say: Callable[[str], None] | None = None) -> None:
    """Train ``tasks`` in ``workers`` spawned processes, calling ``on_record(record)`` here as each ends.
    ``caches`` maps each task's ``setting`` to its ImageCache, whose arrays go to shared memory once. A
    failing trial stops the others and its error is raised here; interrupting ends the workers too."""
    threads = torch.get_num_threads()
    arrays = {setting: (torch.as_tensor(cache.images).share_memory_(),
                        torch.as_tensor(cache.labels).share_memory_()) for setting, cache in caches.items()}
    if say is not None:
        say(f"training {plural(len(tasks), 'trial')}, {workers} at once (worker processes sharing "
            f"{plural(threads, 'CPU thread')}, device {device})")
    import torch.multiprocessing as torch_mp  # registers the reducers that pass shared tensors to workers

    context = torch_mp.get_context("spawn")  # CUDA cannot be used in a forked child
    unfinished = context.Value("i", len(tasks))
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_worker,
                                   initargs=(arrays, str(device), threads, workers, unfinished))
    try:
        futures = {executor.submit(_train, task) for task in tasks}
        while futures:
            done, futures = wait(futures, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    record = future.result()  # a trial's error is raised here
                except BrokenProcessPool as error:
                    raise MuffinError(
                        f"a worker process training trials ({workers} at once) died, most likely out of "
                        "memory; the trials finished before it are stored: run again with fewer workers "
                        "(workers=1 trains one trial at a time in this process)"
                    ) from error
                on_record(record)
    except BaseException:
        # The running trials would otherwise train on to their end; the pool has no public way to stop them.
        workers_alive = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for process in workers_alive:
            process.terminate()
        raise
    executor.shutdown(wait=True)
