"""Recipe candidates against the deployed recipe by twin-grouped 5-fold CV: paired, on the same folds and
fold seeds as notebook 07, so the deployed deeper_cnn's five trials (07's, or `cv --model deeper_cnn`'s)
are reused from the trial store and only the candidates train. Resumable: every finished fold is stored,
so an interrupted run (or a later session) goes on where it stopped. The test split is never read.

    python benchmarks/recipe_cv.py --data-dir ../shared/data/muffin-chihuahua-dev --work-dir work \
        --candidates wd0.1,epochs30

Prints one JSON line per candidate as soon as its five folds are done: its CV risk with the corrected
(Nadeau-Bengio) 95 % interval, the paired difference to the deployed recipe (negative: the candidate is
better) with the corrected t-test's p and Holm's adjustment over the candidates compared in this run, and
its cost (seconds per training, as run here: name the machine beside it). The table "Recipe candidates by
CV" in benchmarks/README.md came from this.

Where a difference is small beside the seed-to-seed spread, ``--seeds 0,1`` trains every configuration with
each training seed on the same folds and averages each fold's loss over the seeds before the paired test:
the folds, and so the test's correction for their overlap, stay those of one 5-fold CV, while the noise of
a single training per fold shrinks. Seed 0 is what 07 ran, so its trials are reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

from muffin_lib.data.cache import load_images
from muffin_lib.data.splits import plan_for_cache
from muffin_lib.selection import RunOptions, TrialStore, cross_validate
from muffin_lib.selection.stats import corrected_resampled_ttest, holm_adjust, summarize_losses
from muffin_lib.training import runtime
from muffin_lib.training.recipe import TrainConfig

MODEL = "deeper_cnn"  # the study's best architecture by CV, and the one 04 deploys
# Transfer candidates (issue 27): EfficientNet-Lite0 from its ImageNet weights, fine-tuned (every layer) or
# probed (only a new linear head, on features computed once); the fine-tuning settings are 08's first recipe.
_FINETUNE = {"model": "transfer", "pretrained": True, "epochs": 6, "lr": 3e-4, "augment": "flip_rotate",
             "label_smoothing": 0.0}
_PROBE = {**_FINETUNE, "train_layers": "head", "augment": "none", "epochs": 30, "lr": 3e-3}
# name -> the changes to the deployed recipe; in the order worth running on a CPU (cheapest first)
CANDIDATES = {
    "wd0.1": {"weight_decay": 0.1},
    "epochs30-wd0.1": {"epochs": 30, "weight_decay": 0.1},
    "epochs30": {"epochs": 30},
    "epochs45": {"epochs": 45},
    # Not a training change: the deployed trials' own held-out folds scored with flip test-time augmentation
    # (every trial records it since it was added; trials stored before that lack it and must be trained anew).
    "flip_tta": {},
    "transfer-probe128": _PROBE,
    "transfer-probe224": {**_PROBE, "image_size": 224},
    "transfer-finetune128-3": {**_FINETUNE, "epochs": 3},
    "transfer-finetune128-6": _FINETUNE,
    "transfer-finetune224-3": {**_FINETUNE, "image_size": 224, "epochs": 3},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--work-dir", required=True,
                        help="the study's work dir: its split plan and trial store")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--candidates", default=",".join(CANDIDATES),
                        help="comma-separated names of CANDIDATES")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds; each fold's loss is "
                        "averaged over them before the paired test (0 is 07's seed)")
    parser.add_argument("--stopped", default="", help="comma-separated names of candidates of the decision's "
                        "family that were stopped early (not run here): each counts in Holm's adjustment "
                        "with p = 1, the conservative bound; e.g. issue 16's decision: --candidates epochs45 "
                        "--seeds 0,1 --stopped epochs30-wd0.1,ema0.995,mixup_cutmix")
    parser.add_argument("--cost", action="store_true", help="no CV: time one training of each candidate "
                        "on fold 0's training part, in fp32 and bf16 (run it alone on the machine)")
    args = parser.parse_args()
    stopped = [name for name in args.stopped.split(",") if name]
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    names = args.candidates.split(",")
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown candidates {unknown}; choose from {list(CANDIDATES)}")

    deployed = TrainConfig(model=MODEL)
    cache = load_images(args.data_dir, args.work_dir, "train", deployed.image_size, deployed.color_mode,
                        progress=False)
    plan = plan_for_cache(cache, args.work_dir)
    store = TrialStore(f"{args.work_dir}/trials.sqlite")
    options = RunOptions(store=store, device=args.device, progress=False, data_dir=args.data_dir,
                         work_dir=args.work_dir)  # a candidate at another image size loads that cache
    print(json.dumps({"machine": runtime.describe_environment(args.device), "model": MODEL}), flush=True)
    if args.cost:
        for name in names:
            for row in training_cost(deployed.replace(**CANDIDATES[name]), args, plan.folds[0][0]):
                print(json.dumps({"candidate": name, **row}), flush=True)
        return

    def run(config):
        return [cross_validate(config.replace(seed=seed), cache, plan.folds, groups=plan.groups,
                               options=options) for seed in seeds]

    baseline = run(deployed)
    rows = []
    for name in names:
        changes = CANDIDATES[name]
        results = [flip_tta(r) for r in baseline] if name == "flip_tta" else run(deployed.replace(**changes))
        trained = [t for result in results for t in result.trials if t.get("seconds")]
        rows.append({
            "candidate": name, **CANDIDATES[name], **seed_averaged_comparison(results, baseline),
            "seconds_per_training": round(sum(t["seconds"] for t in trained) / max(1, len(trained)), 1),
            "execution": results[0].trials[0].get("execution"),
        })
        if name != "flip_tta" and all(_has_flip(r) for r in results):  # the candidate with flip TTA on top
            rows[-1]["with_flip_tta"] = float(np.mean([flip_tta(r).losses for r in results]))
        for row, p_holm in zip(rows, holm_over_family([r["p_value"] for r in rows], stopped), strict=True):
            row["p_holm_so_far"] = p_holm
        rows[-1]["holm_family"] = [r["candidate"] for r in rows] + stopped
        print(json.dumps(rows[-1]), flush=True)


def training_cost(config, args, train_idx) -> list[dict]:
    """Seconds of one training of ``config`` on the images ``train_idx``, per precision: a fine-tuning
    timed for one epoch and scaled to its epochs; a linear probe whole (it is fp32 whatever amp says)."""
    from muffin_lib.training import loop

    cache = load_images(args.data_dir, args.work_dir, "train", config.image_size, config.color_mode,
                        progress=False)
    part = (cache.images[train_idx], cache.labels[train_idx])
    probe = config.train_layers == "head"
    rows = []
    for amp in ["off"] if probe else ["off", "bf16"]:
        timed = config.replace(amp=amp, epochs=config.epochs if probe else 1)
        loop.fit(timed.replace(epochs=1), (part[0][:128], part[1][:128]), device=args.device, progress=False,
                 log=lambda line: None)  # warm-up: allocator, kernels, weights file
        started = time.perf_counter()
        loop.fit(timed, part, device=args.device, progress=False, log=lambda line: None)
        seconds = (time.perf_counter() - started) * config.epochs / timed.epochs
        rows.append({"precision": "fp32" if amp == "off" else amp, "seconds_per_training": round(seconds, 1),
                     "n_train": len(train_idx), "epochs_timed": timed.epochs})
    return rows


def holm_over_family(p_values: list[float], stopped: list[str]) -> list[float]:
    """Holm-adjusted ``p_values`` in a family that also holds the ``stopped`` candidates, each at p = 1."""
    return holm_adjust(list(p_values) + [1.0] * len(stopped))[: len(p_values)]


def _has_flip(result) -> bool:
    return all("flip_tta_zero_one_loss" in trial.get("metrics", {}) for trial in result.trials)


def flip_tta(result):
    """The same CV with each fold scored with flip test-time augmentation (the trials' own records)."""
    if not _has_flip(result):
        raise SystemExit(
            f"the trials of {result.config.model} (seed {result.config.seed}) were stored before trials "
            "recorded flip test-time augmentation; compare it on trials trained since (another --seeds, "
            "or a fresh work dir)"
        )
    return dataclasses.replace(result, losses=[t["metrics"]["flip_tta_zero_one_loss"] for t in result.trials])


def seed_averaged_comparison(candidate: list, deployed: list) -> dict:
    """The candidate's CV against the deployed recipe's, each a list of CVResults (one per training seed) on
    the same folds: every fold's loss averaged over the seeds, then the corrected (Nadeau-Bengio) interval
    and paired t-test on those K averages. With one seed it is ``cv.compare_configs``'s test."""
    runs = candidate + deployed
    if len({result.plan_key for result in runs}) != 1 or len({len(result.losses) for result in runs}) != 1:
        raise SystemExit("every CV compared must use the same folds (split plan); re-run on one work dir")
    n_train, n_test = round(runs[0].n_train), round(runs[0].n_test)
    losses = np.mean([result.losses for result in candidate], axis=0)
    baseline = np.mean([result.losses for result in deployed], axis=0)
    summary = summarize_losses(losses, test_train_ratio=n_test / n_train)
    paired = corrected_resampled_ttest(losses, baseline, n_train=n_train, n_test=n_test)
    return {
        "seeds": [result.config.seed for result in candidate], "cv": summary["mean"],
        "cv_low": summary["ci_low"], "cv_high": summary["ci_high"],
        "per_fold": [round(float(v), 4) for v in losses],
        "per_fold_per_seed": {str(r.config.seed): [round(v, 4) for v in r.losses] for r in candidate},
        "deployed_cv": float(baseline.mean()), "deployed_per_fold": [round(float(v), 4) for v in baseline],
        "diff": paired["mean_diff"], "diff_low": paired["ci_low"], "diff_high": paired["ci_high"],
        "p_value": paired["p_value"],
    }


if __name__ == "__main__":
    main()
