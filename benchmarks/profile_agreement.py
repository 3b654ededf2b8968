"""Agreement of the quick selection budget with the full one, and of bf16 with fp32, read from trial stores.

    python benchmarks/profile_agreement.py FULL_WORK_DIR QUICK_WORK_DIR [--fp32 QUICK_FP32_WORK_DIR]

Each work dir holds the trials of notebook 07's CV (scope ``cv``: the three architectures at lr 3e-3, batch
64, 5 twin-grouped folds, seed 0), e.g. made by ``python -m muffin_lib cv --model
simple_cnn,resnet_like,deeper_cnn --image-size S --epochs E --lr 3e-3 --batch-size 64`` (or by the runner),
and optionally 06's grid for simple_cnn. Nothing is trained: only finished trials are read, and a model
with fewer than 5 folds is reported as incomplete. Prints Markdown tables: per-architecture CV risk with
the corrected interval in each store, the rank of the architectures, the mean risk difference, the grid's
choice in each, and (with --fp32) bf16 vs fp32 per fold on the same folds with the corrected paired test.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from muffin_lib.config import WorkDir  # noqa: E402
from muffin_lib.selection.budget import settings_label  # noqa: E402
from muffin_lib.selection.stats import corrected_resampled_ttest, holm_adjust, summarize_losses  # noqa: E402
from muffin_lib.selection.trial_store import TrialStore  # noqa: E402

MODELS = ("simple_cnn", "deeper_cnn", "resnet_like")
K = 5


def cv_losses(work_dir: Path, lr: float = 3e-3, batch_size: int = 64) -> dict:
    """(model, image_size, epochs, execution) -> {fold: record} of finished CV trials at lr/batch."""
    out: dict = defaultdict(dict)
    for record in TrialStore(WorkDir(work_dir).trials_db).records(scope="cv"):
        config = record["config"]
        if config["lr"] == lr and config["batch_size"] == batch_size:
            execution = record["metrics"].get("execution")
            key = (config["model"], config["image_size"], config["epochs"], execution)
            out[key][record["fold"]] = record
    return out


def table(work_dir: Path, title: str) -> dict:
    found = cv_losses(work_dir)
    print(f"\n### {title}: `{work_dir}`\n")
    print("| model | settings | precision | folds | CV risk [corrected 95% CI] | per fold |\n"
          "|---|---|---|---|---|---|")
    risks = {}
    for (model, size, epochs, execution), folds in sorted(found.items()):
        losses = [folds[k]["metrics"]["zero_one_loss"] for k in sorted(folds)]
        ratio = folds[0]["n_test"] / folds[0]["n_train"] if 0 in folds else 0.25
        complete = sorted(folds) == list(range(K))
        summary = summarize_losses(losses, test_train_ratio=ratio) if len(losses) > 1 else None
        cell = (f"{summary['mean']:.3f} [{summary['ci_low']:.3f}, {summary['ci_high']:.3f}]"
                if summary and complete else f"incomplete ({len(losses)}/{K})")
        print(f"| {model} | {settings_label(size, epochs)} | {execution} | {len(losses)} | {cell} | "
              f"{', '.join(f'{x:.3f}' for x in losses)} |")
        if complete:
            risks[(model, execution)] = (losses, folds[0]["n_train"], folds[0]["n_test"])
    return risks


def paired(risks: dict, pairs: list[tuple], label: str) -> None:
    rows = []
    for a, b in pairs:
        if a in risks and b in risks:
            test = corrected_resampled_ttest(risks[a][0], risks[b][0], risks[a][1], risks[a][2])
            rows.append((a, b, test))
    if not rows:
        return
    adjusted = holm_adjust([t["p_value"] for _, _, t in rows])
    print(f"\n{label} (corrected resampled t-test on the same folds, Holm over the pairs):\n")
    print("| a | b | mean diff a - b [95% CI] | p | p_holm |\n|---|---|---|---|---|")
    for (a, b, test), p_holm in zip(rows, adjusted, strict=True):
        print(f"| {a[0]} {a[1]} | {b[0]} {b[1]} | {test['mean_diff']:+.3f} "
              f"[{test['ci_low']:+.3f}, {test['ci_high']:+.3f}] | {test['p_value']:.3f} | {p_holm:.3f} |")


def grid_choice(work_dir: Path, epochs: int, model: str = "simple_cnn") -> str:
    """The grid's choice: the complete (lr, batch) configuration with the lowest mean at the last rung."""
    found: dict = defaultdict(dict)
    for record in TrialStore(WorkDir(work_dir).trials_db).records(scope="cv"):
        config = record["config"]
        if config["model"] == model and config["epochs"] == epochs:
            found[(config["lr"], config["batch_size"])][record["fold"]] = record["metrics"]["zero_one_loss"]
    complete = {key: sum(folds.values()) / K for key, folds in found.items()
                if sorted(folds) == list(range(K))}
    if len(complete) < 2:
        return f"no grid yet ({len(complete)} complete configuration(s) at {epochs} epochs)"
    (lr, batch), risk = min(complete.items(), key=lambda item: item[1])
    others = ", ".join(f"lr {k[0]:g}/batch {k[1]} {v:.3f}"
                       for k, v in sorted(complete.items()) if k != (lr, batch))
    return f"lr {lr:g}, batch {batch} (CV {risk:.3f}; last rung also: {others})"


def ranking(risks: dict) -> list[str]:
    means = {model: sum(r[0]) / len(r[0]) for (model, _), r in risks.items()}
    return sorted(means, key=means.get)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("full", type=Path)
    parser.add_argument("quick", type=Path)
    parser.add_argument("--fp32", type=Path, default=None,
                        help="a work dir with the quick CV trained in fp32")
    args = parser.parse_args()
    full, quick = table(args.full, "full"), table(args.quick, "quick")
    print(f"\nrank by CV risk: full {ranking(full) or 'incomplete'}; quick {ranking(quick) or 'incomplete'}")
    common = sorted({m for m, _ in full} & {m for m, _ in quick})
    if common:
        diffs = [sum(quick[next(k for k in quick if k[0] == m)][0]) / K
                 - sum(full[next(k for k in full if k[0] == m)][0]) / K for m in common]
        print(f"mean risk difference quick - full over {common}: {sum(diffs) / len(diffs):+.3f} "
              f"(per model {', '.join(f'{m} {d:+.3f}' for m, d in zip(common, diffs, strict=True))})")
    print(f"grid choice (simple_cnn): full {grid_choice(args.full, 15)}; quick {grid_choice(args.quick, 8)}")
    for name, risks in (("full", full), ("quick", quick)):
        keys = sorted(risks)
        paired(risks, [(a, b) for i, a in enumerate(keys) for b in keys[i + 1:]], f"architectures, {name}")
    if args.fp32:
        fp32 = table(args.fp32, "quick in fp32")
        both = {**{(m, e): v for (m, e), v in quick.items()}, **{(m, e): v for (m, e), v in fp32.items()}}
        pairs = [((m, "cpu/bf16"), (m, "cpu/fp32")) for m in MODELS]
        paired(both, pairs, "bf16 vs fp32, same folds and seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
