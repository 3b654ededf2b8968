"""Process pools for the PIL-only jobs (scan, cache, near-duplicate signatures): one home for how many
workers and which start method."""

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
    """A process pool for the PIL-only jobs in ``imageio``.

    Linux forks (fast, and scripts without an ``if __name__ == "__main__"`` guard keep working); the
    children never touch torch, so torch or Jupyter threads in the parent do not matter to them.
    Elsewhere the platform default (spawn) is used.
    """
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*multi-threaded, use of fork", category=DeprecationWarning)
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            yield pool
