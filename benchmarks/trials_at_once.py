"""Cross-validation wall time with trials trained one after another vs several at once (RunOptions.workers).

    python benchmarks/trials_at_once.py --data-dir DATA --work-dir WORK [--models simple_cnn,deeper_cnn]
        [--epochs 2] [--workers 2] [--rounds 3] [--device auto]

Each round cross-validates each model on the study's twin-grouped folds (07's, from the split plan) at the
deployed image size, first with ``workers=1`` (one trial after another in this process, on all its torch
threads), then with ``--workers`` worker processes sharing those threads, alternating so that load
drifts hit both. Nothing is stored (no trial store), so every round trains every fold. It prints each
round's seconds, fold losses (same seeds; they differ only where thread counts change the arithmetic) and
median seconds per epoch of a trial, and the median ratio per model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from muffin_lib.data.cache import load_images  # noqa: E402
from muffin_lib.data.splits import plan_for_cache  # noqa: E402
from muffin_lib.selection import RunOptions, cross_validate  # noqa: E402
from muffin_lib.training import recipe, runtime  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--models", default="simple_cnn,deeper_cnn")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", default="2", help="a number, or auto")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    workers = args.workers if args.workers == "auto" else int(args.workers)
    base = recipe.TrainConfig(epochs=args.epochs)
    cache = load_images(args.data_dir, args.work_dir, "train", base.image_size, base.color_mode,
                        progress=False)
    plan = plan_for_cache(cache, args.work_dir)
    device = runtime.resolve_device(args.device)
    print(f"{runtime.cpu_model()}; {torch.get_num_threads()} torch threads; device {device}, "
          f"amp {runtime.execution_key(base.amp, device, base)}; {len(plan.folds)} folds of {len(cache)} "
          f"images at {base.image_size} px, {args.epochs} epochs per trial; workers {workers}", flush=True)
    for name in args.models.split(","):
        config = base.replace(model=name)
        ratios = []
        for number in range(args.rounds):
            seconds, losses = {}, {}
            for label, count in (("one at a time", 1), (f"{workers} at once", workers)):
                options = RunOptions(device=args.device, progress=False, workers=count)
                started = time.perf_counter()
                result = cross_validate(config, cache, plan.folds, groups=plan.groups, options=options)
                seconds[label] = time.perf_counter() - started
                epoch_seconds = statistics.median(h["seconds"] for t in result.trials
                                                  for h in t["metrics"]["history"])
                losses[label] = (" ".join(f"{t['zero_one_loss']:.3f}" for t in result.trials)
                                 + f"; median epoch {epoch_seconds:.1f} s")
            serial, parallel = seconds.values()
            ratios.append(serial / parallel)
            runs = ", ".join(f"{k} {v:.0f} s ({losses[k]})" for k, v in seconds.items())
            print(f"{name} round {number + 1}: {runs}; speed-up {ratios[-1]:.2f}x", flush=True)
        print(f"{name}: median speed-up {statistics.median(ratios):.2f}x over {args.rounds} rounds "
              f"({', '.join(f'{r:.2f}' for r in ratios)})", flush=True)


if __name__ == "__main__":
    main()
