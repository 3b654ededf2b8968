"""How much a fold's zero-one loss moves with the training seed alone: the same twin-grouped folds as notebook
07, several training seeds, per fold.

    python benchmarks/seed_spread.py --data-dir DATA --work-dir WORK --model deeper_cnn --image-size 64 \
        --epochs 8 --seeds 0,1,2

Reuses every trial already in WORK's store (07's are seed 0) and trains the rest; resumable. Prints one
JSON line: per fold the losses of each seed, their range and standard deviation, and over the folds the
median range, the mean within-fold standard deviation and the CV mean of each seed. The test split is
never read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from muffin_lib.data.cache import load_images  # noqa: E402
from muffin_lib.data.splits import plan_for_cache  # noqa: E402
from muffin_lib.selection import RunOptions, TrialStore, cross_validate  # noqa: E402
from muffin_lib.training import runtime  # noqa: E402
from muffin_lib.training.recipe import TrainConfig  # noqa: E402


def spread(losses_by_seed: dict[int, list[float]]) -> dict:
    """Per fold the losses of every seed, their range and standard deviation; summaries over the folds."""
    folds = list(zip(*losses_by_seed.values(), strict=True))
    per_fold = [{"losses": list(f), "range": max(f) - min(f), "sd": statistics.stdev(f)} for f in folds]
    return {
        "seeds": list(losses_by_seed),
        "per_fold": per_fold,
        "median_range": statistics.median(f["range"] for f in per_fold),
        "max_range": max(f["range"] for f in per_fold),
        "mean_sd": statistics.fmean(f["sd"] for f in per_fold),
        "cv_mean_by_seed": {seed: statistics.fmean(losses) for seed, losses in losses_by_seed.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--work-dir", required=True,
                        help="the study's work dir: its split plan and trial store")
    parser.add_argument("--model", default="deeper_cnn")
    parser.add_argument("--image-size", type=int, default=TrainConfig().image_size)
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (0 is 07's)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    config = TrainConfig(model=args.model, image_size=args.image_size, epochs=args.epochs)
    cache = load_images(args.data_dir, args.work_dir, "train", config.image_size, config.color_mode,
                        progress=False)
    plan = plan_for_cache(cache, args.work_dir)
    store = TrialStore(Path(args.work_dir) / "trials.sqlite")
    options = RunOptions(store=store, device=args.device, progress=False)
    losses = {seed: cross_validate(config.replace(seed=seed), cache, plan.folds, groups=plan.groups,
                                   options=options).losses for seed in seeds}
    precision = runtime.precision_reason(config.amp, args.device, config)
    print(json.dumps({"config": config.to_dict(), "cpu": runtime.cpu_model(), "precision": precision,
                      **spread(losses)}))


if __name__ == "__main__":
    main()
