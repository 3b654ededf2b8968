"""Several trials at once on this machine (``RunOptions.workers``): a pool of spawned worker processes, each
training one trial at a time on the same device, with the cache images in shared memory.

Why: on a GPU a small trial is bound by Python's per-step dispatch (about 6 ms a step on the H100) and the
GPU waits between its kernels; several processes, each dispatching its own trial, fill those gaps (Ray's
fractional GPUs do the same on a cluster: ``ray_backend``); that is unmeasured, so it is asked for with a
number. On a 2-core CPU it gains little: the trainings already use both cores well (benchmarks/README.md,
"Trials at once"). "auto" keeps one trial at a time.

Threads: the workers share the parent's torch threads equally, and a worker takes more at its next epoch
once fewer trials are left than workers, so the last trial of a batch gets every thread back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import torch

from muffin_lib.errors import MuffinError
from muffin_lib.selection.options import check_workers
from muffin_lib.text import plural

# The worker process's state, set once by _start_worker.
_WORKER: dict = {}


def resolve_workers(requested: int | str, device: str | torch.device, pending: int) -> int:
    """How many trials to train at once: ``requested`` (a number, or "auto") for ``pending`` trials on
    ``device``; 1 means one after another in this process.

    "auto" is 1 on every device until a measurement shows more is faster: on a 2-core CPU two workers
    cross-validated at the deployed recipe only 1.09x faster, for twice the memory (benchmarks/README.md,
    "Trials at once"), and no GPU has measured it (processes on one GPU without NVIDIA's MPS take turns).
    Never more than ``pending``.
    """
    workers = check_workers(requested)
    if workers == "auto":
        workers = 1
    return max(1, min(int(workers), int(pending)))


def _start_worker(arrays: dict, device: str, threads: int, workers: int, unfinished) -> None:
    _WORKER.update(arrays=arrays, device=device, threads=threads, workers=workers, unfinished=unfinished)
    torch.set_num_threads(max(1, threads // workers))


def _rebalance(_record: dict | None = None) -> None:
    """Take this worker's share of the threads (an ``on_epoch`` of ``fit``): an equal share among the workers
    while at least as many trials are unfinished, more once fewer are left. The count only falls, so a share
    only grows after other trials have ended: the workers never ask for more threads than there are cores
    (OpenMP slows several-fold when they do)."""
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
    """Train ``tasks`` in ``workers`` spawned processes; ``on_record(record)`` is called here, in this process,
    as each trial ends (so each is stored at once). ``caches`` maps each task's ``setting`` to its ImageCache.

    The images are moved into shared memory once (``share_memory_``: the workers read them without a copy).
    A failing trial stops the others and its error is raised here; the trials finished before it stay
    reported. Interrupting (Ctrl-C, a notebook's stop button) ends the workers too.
    """
    threads = torch.get_num_threads()
    arrays = {}
    for setting, cache in caches.items():
        images, labels = torch.as_tensor(cache.images), torch.as_tensor(cache.labels)
        arrays[setting] = (images.share_memory_(), labels.share_memory_())
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
                        f"a worker process training trials ({workers} at once) died, most likely out of memory; "
                        "the trials finished before it are stored: run again with fewer workers (workers=1 "
                        "trains one trial at a time in this process)"
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
