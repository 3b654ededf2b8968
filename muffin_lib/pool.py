"""Process pools for the PIL-only jobs (scan, cache, near-duplicate signatures)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers() -> int:
    return max(1, min(available_cores(), 8))


@contextlib.contextmanager
def process_pool(workers: int):
    """Linux forks (fast, and works without a ``__main__`` guard; the children never touch torch, so the
    parent's threads do not matter); elsewhere the platform default (spawn)."""
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*multi-threaded, use of fork",
                                category=DeprecationWarning)
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            yield pool
