"""Recipe candidates against the deployed recipe by twin-grouped 5-fold CV: paired, on the same folds and
fold seeds as notebook 07, so the deployed deeper_cnn's five trials (07's, or `cv --model deeper_cnn`'s)
are reused from the trial store and only the candidates train. Resumable: every finished fold is stored,
so an interrupted run (or a later session) goes on where it stopped. The test split is never read.

    python benchmarks/recipe_cv.py --data-dir ../shared/data/muffin-chihuahua-dev --work-dir work \
        --candidates ema0.995,mixup_cutmix

Prints one JSON line per candidate as soon as its five folds are done: its CV risk with the corrected
(Nadeau-Bengio) 95 % interval, the paired difference to the deployed recipe (negative: the candidate is
better) with the corrected t-test's p and Holm's adjustment over the candidates compared in this run, and
its cost (seconds per training, as run here: name the machine beside it). The table "Recipe candidates by
CV" in benchmarks/README.md came from this.
"""

from __future__ import annotations

import argparse
import json

from muffin_lib.data.cache import load_images
from muffin_lib.data.splits import plan_for_cache
from muffin_lib.selection import RunOptions, TrialStore, compare_configs, cross_validate
from muffin_lib.selection.stats import holm_adjust
from muffin_lib.training import runtime
from muffin_lib.training.engine import TrainConfig

MODEL = "deeper_cnn"  # the study's best architecture by CV, and the one 04 deploys
# name -> the changes to the deployed recipe; in the order worth running on a CPU (cheapest first)
CANDIDATES = {
    "ema0.995": {"ema_decay": 0.995},  # a moving average of the weights over about 4 epochs; no extra steps
    "mixup_cutmix": {"mix": "mixup_cutmix"},  # MixUp or CutMix per batch (alpha 1.0); no extra steps
    "wd0.1": {"weight_decay": 0.1},
    "epochs30-wd0.1": {"epochs": 30, "weight_decay": 0.1},
    "epochs30": {"epochs": 30},
    "epochs45": {"epochs": 45},
    "epochs45-mixup_cutmix": {"epochs": 45, "mix": "mixup_cutmix"},
    "epochs30-ema0.995": {"epochs": 30, "ema_decay": 0.995},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--work-dir", required=True, help="the study's work dir: its split plan and trial store")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated names of CANDIDATES")
    args = parser.parse_args()
    names = args.candidates.split(",")
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown candidates {unknown}; choose from {list(CANDIDATES)}")

    deployed = TrainConfig(model=MODEL)
    cache = load_images(args.data_dir, args.work_dir, "train", deployed.image_size, deployed.color_mode, progress=False)
    plan = plan_for_cache(cache, args.work_dir)
    options = RunOptions(store=TrialStore(f"{args.work_dir}/trials.sqlite"), device=args.device, progress=False)
    print(json.dumps({"machine": runtime.describe_environment(args.device), "model": MODEL}), flush=True)

    def run(config):
        return cross_validate(config, cache, plan.folds, groups=plan.groups, options=options)

    baseline = run(deployed)
    rows = []
    for name in names:
        config = deployed.replace(**CANDIDATES[name])
        result = run(config)
        paired = compare_configs(config, deployed, result, baseline)
        trained = [t for t in result.trials if t.get("seconds")]
        rows.append({
            "candidate": name, **CANDIDATES[name], "cv": result.summary["mean"],
            "cv_low": result.summary["ci_low"], "cv_high": result.summary["ci_high"],
            "per_fold": [round(v, 4) for v in result.losses], "deployed_cv": baseline.summary["mean"],
            "diff": paired["mean_diff"], "diff_low": paired["ci_low"], "diff_high": paired["ci_high"],
            "p_value": paired["p_value"],
            "seconds_per_training": round(sum(t["seconds"] for t in trained) / max(1, len(trained)), 1),
            "execution": result.trials[0].get("execution"),
        })
        for row, p_holm in zip(rows, holm_adjust([r["p_value"] for r in rows]), strict=True):
            row["p_holm_so_far"] = p_holm
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
