"""What the notebooks say: one tested function per finding sentence or results block.

Notebooks call these instead of assembling f-strings and dictionaries in cells; every sentence is
computed from the numbers it states.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from muffin_lib.config import CLASSES


def format_ci(value: float, low: float | None, high: float | None, digits: int = 3) -> str:
    """``0.102 [0.085, 0.123]``; the interval is left out when it is unknown (NaN/None)."""
    if low is None or high is None or not np.isfinite(low) or not np.isfinite(high):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


# ----------------------------------------------------------------------------- setup (00)


def environment_summary(environment: dict) -> str:
    """One line for the summary: device, GPU or cores, RAM, torch."""
    hardware = environment["gpu_name"] or f"{environment['cpu_count']} CPU cores"
    return f"{environment['device']} ({hardware}), {environment['ram_gb']} GB RAM, torch {environment['torch']}"


def environment_note(environment: dict) -> str:
    """What notebook 00 tells the reader about the machine, with advice when there is no GPU."""
    if environment["gpu_name"]:
        memory = f" ({environment['gpu_memory_gb']} GB)" if environment["gpu_memory_gb"] else ""
        hardware = f"the GPU **{environment['gpu_name']}**{memory}"
        advice = ""
    else:
        hardware = f"the CPU ({environment['cpu_count']} cores, {environment['torch_threads']} PyTorch threads)"
        advice = ("\n\nThere is no GPU: the `full` profile is slow on a CPU. In Colab choose *Runtime → Change "
                  'runtime type → GPU*; here, try `profile="smoke"` or a smaller `image_size`.')
    return (f"Training will run on **{environment['device']}**, using {hardware}, with {environment['ram_gb']} GB of "
            f"RAM and PyTorch {environment['torch']}. CPU allocator: {environment['cpu_allocator']}.{advice}")


_ORIGINS = {
    "existing": "already in place",
    "kaggle": "downloaded from Kaggle",
    "zip": "extracted from a zip",
    "synthetic": "generated because Kaggle was not reachable or not asked for",
}


def data_finding(scanned, source_used: str, synthetic: bool, data_dir) -> str:
    """How many images, real or synthetic, where they came from, how many were rejected."""
    kind = "SYNTHETIC images (drawn shapes, not photos)" if synthetic else "real photos"
    return (f"{len(scanned.records_for('train')):,} training and {len(scanned.records_for('test')):,} test images, "
            f"{kind}, {_ORIGINS[source_used]} (`{data_dir}`); {len(scanned.rejected)} file(s) rejected as unreadable.")


def setup_results(environment: dict, fetched, scanned, credentials, synthetic: bool, findings: list[str]) -> dict:
    """The results file of notebook 00."""
    return {
        "environment": {**environment, "summary": environment_summary(environment)},
        "source_used": fetched.source_used,
        "synthetic": synthetic,
        "data_dir": fetched.data_dir,
        "images": {split: len(scanned.records_for(split)) for split in ("train", "test")},
        "rejected": len(scanned.rejected),
        "kaggle_credentials": credentials,
        "findings": findings,
    }


# ----------------------------------------------------------------------------- data (01)


def size_frame(records):
    """One row per image: split, class, width, height, mode, aspect ratio and shorter side."""
    import pandas as pd

    sizes = pd.DataFrame([{"split": r.split, "class": CLASSES[r.label], "width": r.width, "height": r.height,
                           "mode": r.mode} for r in records])
    sizes["aspect"] = sizes["width"] / sizes["height"]
    sizes["shorter side"] = sizes[["width", "height"]].min(axis=1)
    return sizes


def color_statistics(cache, device) -> object:
    """Per-class mean and std of each channel, and the mean brightness, on the cached (model-input) images."""
    import pandas as pd
    import torch

    channels = ["grey"] if cache.color_mode == "grayscale" else ["red", "green", "blue"]
    rows = {}
    for label, name in enumerate(CLASSES):
        pixels = cache.images[cache.labels == label].to(device, torch.float32)
        rows[name] = {
            **{f"mean {c}": float(pixels[:, i].mean()) for i, c in enumerate(channels)},
            **{f"std {c}": float(pixels[:, i].std()) for i, c in enumerate(channels)},
            "brightness": float(pixels.mean()),
        }
    return pd.DataFrame(rows).T.round(1)


def color_finding(color_stats) -> str:
    difference = color_stats.loc["muffin"] - color_stats.loc["chihuahua"]
    means = [c for c in color_stats.columns if c.startswith("mean ")]
    biggest = difference[means].abs().idxmax()
    return (
        f"Muffin images are on average {abs(difference['brightness']):.1f} grey levels "
        f"{'brighter' if difference['brightness'] > 0 else 'darker'} than Chihuahua images; the largest class "
        f"difference in a channel mean is {biggest.removeprefix('mean ')} ({difference[biggest]:+.1f})."
    )


def exploration_results(audit: dict, majority: str, baseline: float, color_stats, findings: list[str],
                        synthetic: bool) -> dict:
    """The results file of notebook 01 (the near-duplicate groups themselves stay in the audit cache)."""
    near = audit["near_duplicates"]
    return {
        "synthetic": synthetic,
        "counts": audit["splits"],
        "majority_class": majority,
        "majority_baseline_test_zero_one_loss": baseline,
        "sizes": audit["sizes"],
        "color_stats": color_stats.to_dict(orient="index"),
        "rejected": audit["rejected"],
        "duplicates": {k: v for k, v in audit["duplicates"].items() if k != "groups"},
        "near_duplicates": {k: v for k, v in near.items() if k not in ("groups", "test_with_train_twin_paths")},
        "findings": findings,
    }


def twins_finding(near: dict, n_train: int, n_test: int) -> str:
    """The near-duplicate sentence of notebook 01 from ``audit_dataset(...)["near_duplicates"]``."""
    within = near.get("n_groups_within_train", 0)
    conflicts = len(near["conflicting_labels"])
    return (
        f"{near['n_groups']} groups of near-duplicate photos (twins: the same picture re-encoded, resized or "
        f"trimmed) hold {near['n_images_in_groups']} images; {near['test_with_train_twin']} of the {n_test:,} test "
        f"images ({near['test_with_train_twin'] / max(n_test, 1):.1%}) have a twin among the {n_train:,} training "
        f"images, and {within} groups lie inside the training split. Every split and fold keeps a group on one "
        "side, and test scores are reported on the twin-free part of the test split"
        + (f"; {conflicts} group(s) carry conflicting labels." if conflicts else "; no group carries two labels.")
    )


def twin_pairs_to_show(groups: Sequence[Sequence[str]], n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Up to ``n`` (train, test) twin pairs (train-train pairs when there are too few), seeded."""
    rng = np.random.default_rng(seed)
    crossing, inside = [], []
    for group in groups:
        train = [p for p in group if p.startswith("train/")]
        test = [p for p in group if p.startswith("test/")]
        if train and test:
            crossing.append((train[0], test[0]))
        elif len(group) > 1:
            inside.append((group[0], group[1]))
    chosen = [crossing[i] for i in rng.permutation(len(crossing))[:n]]
    if len(chosen) < n:
        chosen += [inside[i] for i in rng.permutation(len(inside))[: n - len(chosen)]]
    return chosen


# ----------------------------------------------------------------------------- preprocessing (02)


def cache_table(*caches):
    """One row per decoded cache: split, images, tensor shape, size in MB, file."""
    import pandas as pd

    return pd.DataFrame([
        {"split": c.split, "images": len(c.labels), "tensor": "x".join(map(str, c.images.shape)),
         "MB": round(c.images.numel() / 2**20, 1), "cache file": c.path.name}
        for c in caches
    ])


def split_table(labels, holdout, plan):
    """Size and class shares of the fit and validation parts and of each fold's held-out part."""
    import pandas as pd

    labels = np.asarray(labels)
    parts = {"fit (train minus validation)": holdout.train_idx, "validation": holdout.val_idx}
    parts.update({f"fold {k + 1} held out": held_out for k, (_, held_out) in enumerate(plan.folds)})
    return pd.DataFrame([
        {"part": name, "images": len(idx), **{f"{c} share": float(np.mean(labels[idx] == i)) for i, c in enumerate(CLASSES)}}
        for name, idx in parts.items()
    ]).round(3)


def resize_finding(original_sizes: Sequence[tuple[int, int]], image_size: int, color_mode: str) -> str:
    """How much of a photo the centre crop keeps and how many of its pixels a model sees."""
    kept = np.mean([min(w, h) ** 2 / (w * h) for w, h in original_sizes])
    pixels = np.mean([image_size**2 / (w * h) for w, h in original_sizes])
    channels = " in one grey channel instead of three." if color_mode == "grayscale" else " (in colour)."
    return (f"The centre crop keeps {kept:.0%} of a shown photo's area on average, and at {image_size} px a model "
            f"sees {pixels:.1%} of the original pixel count{channels}")


def augment_finding(name: str, preset: dict) -> str:
    return f"Augmentation preset '{name}': " + ", ".join(f"{k}={v}" for k, v in preset.items()) + "."


def preprocessing_results(train, test, holdout, plan, augment: str, preset: dict, findings: list[str],
                          synthetic: bool) -> dict:
    """The results file of notebook 02."""
    return {
        "synthetic": synthetic,
        "images": {"train": len(train.labels), "test": len(test.labels)},
        "fit": len(holdout.train_idx),
        "validation": len(holdout.val_idx),
        "folds": [len(t) for _, t in plan.folds],
        "twin_groups_in_train": len(plan.twin_groups()),
        "cache_files": [train.path, test.path],
        "augment": {"preset": augment, **preset},
        "findings": findings,
    }


# ----------------------------------------------------------------------------- one model (03-05, 08)


def validation_summary(val_predictions: dict, confidence: float = 0.95) -> dict:
    """Zero-one loss on the validation images with its Wilson interval, confusion matrix, per-class report."""
    from muffin_lib import metrics
    from muffin_lib.metrics import scores

    labels = np.asarray(val_predictions["labels"])
    predicted = np.asarray(val_predictions["predicted"])
    summary = scores(labels == predicted, confidence)
    summary["confusion"] = metrics.confusion(labels, predicted, len(CLASSES)).tolist()
    summary["per_class"] = metrics.per_class_report(labels, predicted, CLASSES)
    return summary


def most_confident_errors(val_predictions: dict, k: int) -> list[dict]:
    """The ``k`` wrong predictions with the highest probability for the predicted class."""
    muffin = CLASSES.index("muffin")
    rows = []
    for path, label, guess, p_muffin in zip(val_predictions["relpaths"], val_predictions["labels"],
                                            val_predictions["predicted"], val_predictions["p_muffin"], strict=True):
        if label != guess:
            rows.append({"relpath": path, "label": label, "predicted": guess,
                         "confidence": p_muffin if guess == muffin else 1.0 - p_muffin})
    return sorted(rows, key=lambda row: row["confidence"], reverse=True)[:k]


def curve_finding(model: str, history: Sequence[dict]) -> str:
    """Last and lowest validation zero-one loss, against the training batches' error."""
    last = history[-1]
    values = [h["val_zero_one_loss"] for h in history]
    best_epoch = int(np.argmin(values)) + 1
    train_error = 1.0 - last["train_accuracy"]
    return (
        f"{model}: validation zero-one loss {last['val_zero_one_loss']:.3f} after {len(history)} epoch(s) "
        f"(lowest {min(values):.3f}, at epoch {best_epoch}), against {train_error:.3f} on the augmented training "
        f"batches of the last epoch (difference {last['val_zero_one_loss'] - train_error:+.3f})."
    )


def validation_finding(model: str, summary: dict) -> str:
    confusion = summary["confusion"]
    worst = max(range(len(CLASSES)), key=lambda c: confusion[c][1 - c] / max(1, sum(confusion[c])))
    return (
        f"{model}: validation zero-one loss "
        f"{format_ci(summary['zero_one_loss'], summary['ci_low'], summary['ci_high'])} ({summary['errors']} errors "
        f"in {summary['n']} validation images, 95% Wilson interval; no twin of a validation image was trained on). "
        f"Most errors are {CLASSES[worst]}s taken for {CLASSES[1 - worst]}s ({confusion[worst][1 - worst]} of "
        f"{sum(confusion[worst])}). The test split is scored once, for every model together, in notebook 09."
    )


def model_results(run, summary: dict, findings: list[str], synthetic: bool, name: str | None = None) -> dict:
    """The results file of a training notebook: config, history, validation scores, the models row."""
    seconds = sum(h.get("seconds") or 0 for h in run.history)
    name = name or run.config.model
    return {
        "synthetic": synthetic,
        "config": run.config.to_dict(),
        "checkpoint": run.checkpoint_path,
        "resumed": run.resumed,
        "history": run.history,
        "validation": {k: v for k, v in summary.items() if k not in ("confusion", "per_class")},
        "models": {
            name: {
                "val_zero_one_loss": summary["zero_one_loss"],
                "val_ci": [summary["ci_low"], summary["ci_high"]],
                "epochs": len(run.history),
                "train_seconds": seconds,
                "checkpoint": str(run.checkpoint_path),
            }
        },
        "findings": findings,
    }


def training_note(run) -> str:
    seconds = sum(h.get("seconds") or 0 for h in run.history)
    if run.resumed:
        return f"Reused the checkpoint `{run.checkpoint_path}` (same configuration, data, code and precision)."
    return f"Trained {len(run.history)} epoch(s) in {seconds:.0f} s on {run.device}; checkpoint `{run.checkpoint_path}`."


def validation_comparison(work_dir, summaries: dict[str, dict], others: Sequence[str]):
    """Validation zero-one loss with its interval for ``summaries`` (name -> validation_summary) and the
    models of ``others`` whose training notebook saved results (same validation images)."""
    import pandas as pd

    from muffin_lib.results import load_all_results

    rows = {name: (s["zero_one_loss"], s["ci_low"], s["ci_high"]) for name, s in summaries.items()}
    saved = {}
    for result in load_all_results(work_dir).values():
        saved.update(result.get("models") or {})
    for name in others:
        numbers = saved.get(name, {})
        if "val_zero_one_loss" in numbers:
            rows[name] = (numbers["val_zero_one_loss"], *numbers["val_ci"])
    return pd.DataFrame(rows, index=["val", "val_low", "val_high"]).T


def transfer_initialisation(pretrained: bool) -> tuple[bool, str, str | None]:
    """``(use_pretrained, what the network starts from, why the weights are missing or None)`` for notebook
    08: the ImageNet weights when asked for and loadable (downloaded once, or cached), else random init."""
    from muffin_lib import models
    from muffin_lib.errors import MuffinError

    if not pretrained:
        return False, "ResNet-18 from random initialisation (pretrained=False)", None
    try:
        models.load_pretrained_state_dict(progress=False)
    except MuffinError as error:
        return False, "ResNet-18 from RANDOM initialisation (the ImageNet weights could not be loaded)", str(error)
    return True, "ImageNet-pretrained ResNet-18", None


def initialisation_note(init_text: str, weights_note: str | None) -> str:
    note = f"**Initialisation: {init_text}.**"
    if weights_note:
        note += f"\n\n> {weights_note}\n\nEverything below is therefore *not* a transfer-learning result."
    return note


# ----------------------------------------------------------------------------- cross-validation (06, 07)


def grid_plan(base, grid: dict, folds, rung_epochs: Sequence[int], n_images: int) -> str:
    """What notebook 06 is about to run: configurations, rungs, trials, fold sizes."""
    n_configs = int(np.prod([len(v) for v in grid.values()]))
    k = len(folds)
    subset = sum(len(t) for _, t in folds)
    if rung_epochs:
        schedule = [*rung_epochs, base.epochs]
        survivors, trials = n_configs, 0
        for _ in schedule:
            trials += survivors * k
            survivors = max(1, int(np.ceil(survivors / 3)))
        plan = (f"successive halving over {n_configs} configurations at {' -> '.join(map(str, schedule))} epochs "
                f"(the best third goes on): at most **{trials} trials** instead of {n_configs * k} at {base.epochs} epochs")
    else:
        plan = f"{n_configs} configurations x {k} folds = **{n_configs * k} trials** at {base.epochs} epochs"
    return (
        f"{plan}, of `{base.model}` ({base.image_size} px {base.color_mode}); each trains on {len(folds[0][0]):,} "
        f"images and is scored on {len(folds[0][1]):,} others"
        + (f" (a stratified, twin-grouped subset of {subset:,} of the {n_images:,} training images)." if subset < n_images
           else ".")
    )


def grid_table(result):
    """The grid's table, best first within the last rung, then the earlier rungs."""
    columns = ["rung", "epochs", *result.varied, "mean", "std", "ci_low", "ci_high", "n_folds", "seconds"]
    return result.table.sort_values(["rung", "mean"], ascending=[False, True])[columns].reset_index(drop=True)


def grid_findings(result, model: str, n_folds: int) -> list[str]:
    """The best configuration (and how many others the last rung cannot tell apart) and each parameter's effect."""
    best = result.best_result.summary
    last = result.table[result.table["rung"] == result.table["rung"].max()]
    within = int((last["mean"] <= best["ci_high"]).sum()) - 1
    setting = ", ".join(f"{name}={getattr(result.best, name):g}" for name in result.varied)
    best_finding = (
        f"Best of {len(result.rungs[0])} configurations for {model}: {setting}, CV zero-one risk "
        f"{format_ci(best['mean'], best['ci_low'], best['ci_high'])} ({n_folds} folds, {result.best.epochs} epochs; "
        f"{best['interval']} interval). "
        + (f"{within} other configuration(s) of the last rung have a mean inside its interval, so the grid cannot "
           "tell them apart from the best." if within > 0 else "No other configuration of the last rung has a mean "
           "inside its interval.")
    )
    first = result.table[result.table["rung"] == 0]
    effects = []
    for name in result.varied:
        series = first.groupby(name)["mean"].mean()
        if len(series) > 1:
            effects.append(f"{name} moves the average first-rung risk from {series.min():.3f} (at {series.idxmin():g}) "
                           f"to {series.max():.3f} (at {series.idxmax():g})")
    effect_finding = "Effect of each hyper-parameter: " + ("; ".join(effects) or "only one value of each was tried") + "."
    return [best_finding, effect_finding]


def grid_results(result, base, grid: dict, folds, settings, findings: list[str], synthetic: bool) -> dict:
    """The results file of notebook 06 (read by 07 and 09)."""
    best = result.best_result.summary
    return {
        "synthetic": synthetic,
        "base_config": base.to_dict(),
        "grid": grid,
        "rung_epochs": list(settings.rung_epochs),
        "n_folds": len(folds),
        "max_images": settings.max_images,
        "best_config": result.best.to_dict(),
        "best": {
            **{name: getattr(result.best, name) for name in result.varied},
            "cv_risk": best["mean"],
            "cv_ci": [best["ci_low"], best["ci_high"]],
            "cv_interval": best["interval"],
        },
        "table": result.table.drop(columns=["config_key"]).to_dict(orient="records"),
        "findings": findings,
    }


def cv_table(results: dict) -> object:
    """One row per model: CV mean (``cv``), its corrected interval (``cv_low``, ``cv_high``), the naive one,
    and the per-fold losses."""
    import pandas as pd

    rows = []
    for name, result in results.items():
        s = result.summary
        rows.append({
            "model": name, "cv": s["mean"], "cv_low": s["ci_low"], "cv_high": s["ci_high"],
            "naive_ci_low": s["naive_ci_low"], "naive_ci_high": s["naive_ci_high"],
            **{f"fold {i + 1}": loss for i, loss in enumerate(result.losses)},
        })
    return pd.DataFrame(rows).set_index("model")


def cv_finding(results: dict, n_folds: int) -> str:
    ranked = sorted(results, key=lambda m: results[m].summary["mean"])
    interval = results[ranked[0]].summary["interval"]
    parts = [f"{m} {format_ci(results[m].summary['mean'], results[m].summary['ci_low'], results[m].summary['ci_high'])}"
             for m in ranked]
    return (f"{n_folds}-fold twin-grouped CV zero-one risk ({interval} interval): " + ", ".join(parts)
            + f" (lowest: {ranked[0]}).")


def comparison_finding(row: dict) -> str:
    better, worse = (row["a"], row["b"]) if row["mean_diff"] < 0 else (row["b"], row["a"])
    verdict = "a significant difference" if row["p_value"] < 0.05 else "not a significant difference"
    return (
        f"{better} vs {worse}: CV risk lower by {abs(row['mean_diff']):.3f} (corrected 95% CI of the difference "
        f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}], p = {row['p_value']:.3f}): {verdict} at the 5% level"
    )


def nested_finding(nested, grid_best_risk: float, model: str, grid_names: Sequence[str], n_outer: int,
                   n_inner: int) -> str:
    s = nested.summary
    chosen = nested.table.groupby(list(grid_names)).size()
    return (
        f"Nested CV ({n_outer} outer x {n_inner} inner folds, twin-grouped) puts the risk of tuning {model} over "
        f"{', '.join(grid_names)} at {format_ci(s['mean'], s['ci_low'], s['ci_high'])} ({s['interval']} interval), "
        f"against {grid_best_risk:.3f} for the best grid entry's own CV risk (optimism "
        f"{s['mean'] - grid_best_risk:+.3f}); "
        + ("the inner searches chose the same configuration in every outer fold." if len(chosen) == 1
           else f"the inner searches chose {len(chosen)} different configurations over {n_outer} outer folds.")
    )


def cv_results(cv: dict, comparisons: list[dict], nested, grid_results: dict, findings: list[str],
               synthetic: bool) -> dict:
    """The results file of notebook 07: CV risk per model (corrected interval), comparisons, nested CV."""
    models = {
        name: {"cv_risk": r.summary["mean"], "cv_ci": [r.summary["ci_low"], r.summary["ci_high"]],
               "cv_interval": r.summary["interval"], "cv_losses": r.losses}
        for name, r in cv.items()
    }
    from muffin_lib.final_test import tuned_name

    best = grid_results["best_config"]
    models[tuned_name(best)] = {
        "cv_risk": nested.summary["mean"],
        "cv_ci": [nested.summary["ci_low"], nested.summary["ci_high"]],
        "cv_interval": nested.summary["interval"],
        "cv_kind": "nested",
    }
    return {
        "synthetic": synthetic,
        "models": models,
        "comparisons": comparisons,
        "nested": {**nested.to_dict(), "grid": grid_results["grid"]},
        "tuned_config": best,
        "findings": findings,
    }


# ----------------------------------------------------------------------------- the one test evaluation (09)


def final_test_findings(final) -> list[str]:
    """Sentences for notebook 09 from ``final_test.evaluate_candidates``."""
    table = final.table
    lines = []
    for name, row in table.iterrows():
        lines.append(
            f"{name}: test zero-one loss on the twin-free part "
            f"{format_ci(row['twin_free'], row['twin_free_low'], row['twin_free_high'])} "
            f"({int(row['twin_free_errors'])} errors in {final.n_twin_free}); on the whole test split "
            f"{format_ci(row['all'], row['all_low'], row['all_high'])} ({final.n_test} images)."
        )
    for pair in final.paired:
        if pair["better"] is None:
            verdict = "a tie"
        else:
            verdict = (f"{pair['better']} ahead, {'significant' if pair['significant'] else 'not significant'} "
                       "at the 5% level")
        lines.append(
            f"{pair['a']} vs {pair['b']} on the twin-free test images: {pair['only_a_wrong']} only {pair['a']} gets "
            f"wrong, {pair['only_b_wrong']} only {pair['b']} (exact McNemar p = {pair['p_value']:.3g}, Holm-adjusted "
            f"{pair['p_holm']:.3g}; {verdict})."
        )
    return lines


def per_class_frame(per_class: dict):
    """``metrics.per_class_report`` as a table: precision, recall, F1 and integer support per class."""
    import pandas as pd

    rows = {name: scores for name, scores in per_class.items() if name != "accuracy"}
    return pd.DataFrame(rows).T.astype({"support": int}).round(3)


def best_by_cv(work_dir, names: Sequence[str]) -> str:
    """Of ``names``, the one with the lowest CV risk in notebook 07's results (the first name without them)."""
    from muffin_lib.results import load_all_results

    models = (load_all_results(work_dir).get("07_cv_risk") or {}).get("models") or {}
    scored = [name for name in names if "cv_risk" in models.get(name, {})]
    return min(scored, key=lambda name: models[name]["cv_risk"]) if scored else list(names)[0]


def most_confident_test_errors(final, name: str, k: int) -> list[dict]:
    """The ``k`` twin-free test images ``name`` got wrong with the highest confidence."""
    p = final.predictions[name]
    free = set(final.twin_free_paths)
    rows = [
        {"relpath": path, "label": label, "predicted": guess, "confidence": conf}
        for path, label, guess, conf, ok in zip(p["relpaths"], p["labels"], p["predicted"], p["confidence"],
                                                p["correct"], strict=True)
        if not ok and path in free
    ]
    return sorted(rows, key=lambda row: row["confidence"], reverse=True)[:k]
