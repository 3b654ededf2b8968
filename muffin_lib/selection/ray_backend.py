"""The same (configuration, fold) trials as the serial backend, run in parallel through Ray Tune.

Each Tune trial is one ``TrialTask``; the image arrays go to the object store once (``tune.with_parameters``).
A ``Callback`` in the driver stores each trial as it completes, so the SQLite file has a single writer and
an interrupted run keeps what finished. Ray is an optional extra: ``pip install 'muffin-lab[ray]'``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from muffin_lib.config import PACKAGE_PARENT
from muffin_lib.errors import MuffinError
from muffin_lib.text import plural

INSTALL_HINT = "pip install 'muffin-lab[ray]' (or pip install \"ray[tune]\")"
_RECORD_KEY = "muffin_record"


@dataclass(frozen=True)
class RaySettings:
    """Where Ray runs (``address`` joins a cluster; else a local instance with ``num_cpus``, default all) and
    what each trial reserves; ``gpus_per_trial`` may be a fraction (several trials share one GPU)."""

    address: str | None = None
    num_cpus: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent_trials: int | None = None


def import_ray():
    """``(ray, ray.tune)``, or a MuffinError that says how to install them."""
    try:
        import ray
        from ray import tune
    except ImportError as error:
        raise MuffinError(f"the Ray backend needs Ray Tune, which is not importable ({error}); "
                          f"{INSTALL_HINT}") from error
    return ray, tune


def _setting_name(setting: tuple[int, str]) -> str:
    return f"{setting[0]}px-{setting[1]}"


def _init_ray(ray, address: str | None, num_cpus: int | None) -> bool:
    """Connect to ``address`` or start a local instance on loopback; True when this call started it."""
    if ray.is_initialized():
        return False
    if address:
        import muffin_lib

        # Ship this checkout of the package to the cluster's workers.
        ray.init(address=address, runtime_env={"py_modules": [muffin_lib]}, logging_level="WARNING")
        return True
    # The folder that holds muffin_lib goes on the workers' PYTHONPATH.
    python_path = os.pathsep.join(p for p in (str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")) if p)
    # Ray gives its raylet a fixed 30 s to come up, which a busy machine can miss: try twice.
    for attempt in (1, 2):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                     runtime_env={"env_vars": {"PYTHONPATH": python_path}}, logging_level="WARNING")
            return True
        except Exception as error:  # Ray raises a bare Exception for a startup timeout
            ray.shutdown()
            if attempt == 2:
                raise MuffinError(
                    f"could not start a local Ray instance ({error}); the machine may be overloaded. "
                    "Run again, or use --backend serial"
                ) from error
    return True


def _trainable(params: dict, *, tasks, arrays, device: str, threads: int) -> None:
    """One Tune trial: train and score ``tasks[params['task']]`` on the shared arrays."""
    import torch
    from ray import tune

    from muffin_lib.files import jsonable
    from muffin_lib.selection.trial import run_task

    torch.set_num_threads(max(1, threads))
    task = tasks[params["task"]]
    images, labels = arrays[_setting_name(task.setting)]
    record = run_task(task, images, labels, device=device, progress=False)
    tune.report({_RECORD_KEY: json.dumps(jsonable(record))})


@contextlib.contextmanager
def _quiet_tune():
    """Tune's new console output prints a banner and paths even at verbose=0; our callback reports trials."""
    previous = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = previous


def _check(tasks: Sequence, settings: RaySettings) -> None:
    if settings.cpus_per_trial <= 0 or settings.gpus_per_trial < 0:
        raise MuffinError(f"need cpus_per_trial > 0 and gpus_per_trial >= 0, got {settings.cpus_per_trial}, "
                          f"{settings.gpus_per_trial}")
    on_gpu = sorted({task.execution for task in tasks if task.execution.startswith("cuda/")})
    if on_gpu and settings.gpus_per_trial <= 0:
        # Ray hides the GPUs from trials that reserve none: they would train on the CPU under a GPU key.
        raise MuffinError(
            f"the trials are keyed to run as {', '.join(on_gpu)} but gpus_per_trial is 0, so Ray's workers "
            "would see no GPU; pass --gpus-per-trial (e.g. 0.5 or 1), or --device cpu"
        )


def _tuner(tune, trainable, n_tasks: int, settings: RaySettings, storage: str, callback):
    return tune.Tuner(
        tune.with_resources(trainable, {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial}),
        param_space={"task": tune.grid_search(list(range(n_tasks)))},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=settings.max_concurrent_trials,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name="muffin-trials", storage_path=storage, verbose=0, callbacks=[callback],
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


def run_tasks(tasks: Sequence, caches: dict, *, on_record: Callable[[dict], None], device: str = "auto",
              settings: RaySettings | None = None) -> list[dict]:
    """Run ``tasks`` on Ray Tune; ``on_record(record)`` is called in the driver as each one completes.
    ``caches`` maps each task's ``setting`` to its ImageCache; a local instance started here is shut down."""
    ray, tune = import_ray()
    tasks, settings = list(tasks), settings or RaySettings()
    _check(tasks, settings)
    if not tasks:
        return []
    arrays = {_setting_name(setting): (np.ascontiguousarray(cache.images),
                                       np.asarray(cache.labels, dtype=np.int64))
              for setting, cache in caches.items()}
    finished: dict[tuple[str, int, str], dict] = {}

    class StoreCallback(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            payload = (trial.last_result or {}).get(_RECORD_KEY)
            if payload is None:
                return
            record = json.loads(payload)
            identity = (record["config_key"], record["fold"], record["scope"])
            if identity not in finished:
                finished[identity] = record
                on_record(record)

    started = _init_ray(ray, settings.address, settings.num_cpus)
    storage = tempfile.mkdtemp(prefix="muffin-ray-")
    try:
        with _quiet_tune():
            trainable = tune.with_parameters(_trainable, tasks=tasks, arrays=arrays, device=device,
                                             threads=int(max(1, settings.cpus_per_trial)))
            results = _tuner(tune, trainable, len(tasks), settings, storage, StoreCallback()).fit()
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if started:
            ray.shutdown()
    if results.errors:
        raise MuffinError(f"{len(results.errors)} of {len(tasks)} Ray trials failed ({len(finished)} "
                          f"finished and are stored); first error: {results.errors[0]}")
    if len(finished) < len(tasks):
        raise MuffinError(f"Ray Tune stopped after {len(finished)} of {plural(len(tasks), 'trial')}; the "
                          "finished ones are stored, run the same command again to resume")
    return list(finished.values())
