"""Notebooks 06, 07 and 09: grid, cross-validation, nested CV and the one test evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from muffin_lib.results import load_all_results
from muffin_lib.study.report.models import IMAGENET_CAVEAT, format_ci, transfer_name
from muffin_lib.test_looks import look_label
from muffin_lib.text import plural

__all__ = ["best_by_cv", "calibration_finding", "comparison_finding", "cv_finding", "cv_results", "cv_table",
           "final_results", "final_test_findings", "grid_findings", "grid_plan", "grid_results", "grid_table",
           "most_confident_test_errors", "nested_finding"]


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
        plan = (f"successive halving over {plural(n_configs, 'configuration')} at "
                f"{' -> '.join(map(str, schedule))} epochs (the best third goes on): at most "
                f"**{trials} trials** instead of {n_configs * k} at {plural(base.epochs, 'epoch')}")
    else:
        plan = (f"{plural(n_configs, 'configuration')} x {k} folds = **{n_configs * k} trials** at "
                f"{plural(base.epochs, 'epoch')}")
    part = (f" (a stratified, twin-grouped subset of {subset:,} of the {n_images:,} training images)."
            if subset < n_images else ".")
    return (f"{plan}, of `{base.model}` ({base.image_size} px {base.color_mode}); each trains on "
            f"{len(folds[0][0]):,} images and is scored on {len(folds[0][1]):,} others{part}")


def grid_table(result):
    """The grid's table, best first within the last rung, then the earlier rungs."""
    columns = ["rung", "epochs", *result.varied, "mean", "std", "ci_low", "ci_high", "n_folds", "seconds"]
    return result.table.sort_values(["rung", "mean"], ascending=[False, True])[columns].reset_index(drop=True)


def grid_findings(result, model: str, n_folds: int) -> list[str]:
    """The best configuration (and how many of the last rung it cannot be told apart from), each effect."""
    best = result.best_result.summary
    last = result.table[result.table["rung"] == result.table["rung"].max()]
    within = int((last["mean"] <= best["ci_high"]).sum()) - 1
    setting = ", ".join(f"{name}={getattr(result.best, name):g}" for name in result.varied)
    if within > 0:
        one = within == 1
        apart = (f"{plural(within, 'other configuration')} of the last rung {'has' if one else 'have'} a "
                 f"mean inside its interval, so the grid cannot tell {'it' if one else 'them'} apart from "
                 "the best.")
    else:
        apart = "No other configuration of the last rung has a mean inside its interval."
    best_finding = (
        f"Best of {plural(len(result.rungs[0]), 'configuration')} for {model}: {setting}, CV zero-one risk "
        f"{format_ci(best['mean'], best['ci_low'], best['ci_high'])} ({n_folds} folds at "
        f"{settings_of(result.best)}; {best['interval']} interval). {apart}"
    )
    first = result.table[result.table["rung"] == 0]
    effects = []
    for name in result.varied:
        series = first.groupby(name)["mean"].mean()
        if len(series) > 1:
            effects.append(f"{name} moves the average first-rung risk from {series.min():.3f} (at "
                           f"{series.idxmin():g}) to {series.max():.3f} (at {series.idxmax():g})")
    effects_text = "; ".join(effects) or "only one value of each was tried"
    return [best_finding, f"Effect of each hyper-parameter: {effects_text}."]


def grid_results(result, base, grid: dict, folds, settings, findings: list[str], synthetic: bool) -> dict:
    """The results file of notebook 06 (read by 07 and 09)."""
    best = result.best_result.summary
    return {"synthetic": synthetic, "base_config": base.to_dict(), "grid": grid,
            "rung_epochs": list(settings.rung_epochs), "n_folds": len(folds),
            "max_images": settings.max_images, "best_config": result.best.to_dict(),
            "best": {**{name: getattr(result.best, name) for name in result.varied}, "cv_risk": best["mean"],
                     "cv_ci": [best["ci_low"], best["ci_high"]], "cv_interval": best["interval"]},
            "table": result.table.drop(columns=["config_key"]).to_dict(orient="records"),
            "findings": findings}


def cv_table(results: dict) -> object:
    """One row per model: CV mean, corrected and naive intervals, and the per-fold losses."""
    import pandas as pd

    rows = []
    for name, result in results.items():
        s = result.summary
        rows.append({"model": name, "cv": s["mean"], "cv_low": s["ci_low"], "cv_high": s["ci_high"],
                     "naive_ci_low": s["naive_ci_low"], "naive_ci_high": s["naive_ci_high"],
                     **{f"fold {i + 1}": loss for i, loss in enumerate(result.losses)}})
    return pd.DataFrame(rows).set_index("model")


def settings_of(config) -> str:
    """The settings a CV number was produced at, for its table header or sentence (selection.budget); the
    transfer model's own recipe says how it trained."""
    from muffin_lib.selection.budget import settings_label

    if config.model == "transfer":
        start = "ImageNet weights" if config.pretrained else "random initialisation"
        if config.train_layers == "head":
            return (f"{config.image_size} px, a linear probe on the frozen network ({start}; "
                    f"{plural(config.epochs, 'epoch')} of its head)")
        return f"{config.image_size} px, {plural(config.epochs, 'epoch')}, fine-tuned from {start}"
    return settings_label(config.image_size, config.epochs)


def _deployed(config) -> bool:
    """Whether ``config`` is a recipe the study deploys: the transfer recipe, or the CNNs' size and epochs
    (selection.budget)."""
    from muffin_lib.selection.budget import budget_for
    from muffin_lib.training.recipe import TRANSFER_RECIPE as deployed

    if config.model == "transfer":
        return config.replace(seed=deployed.seed, color_mode=deployed.color_mode) == deployed
    named = budget_for(config.image_size, config.epochs)
    return bool(named and named.deployed)


def _ci_of(summary: dict) -> str:
    return format_ci(summary["mean"], summary["ci_low"], summary["ci_high"])


def cv_finding(results: dict, n_folds: int) -> str:
    """Each model's CV risk, lowest first, grouped by the settings that produced it."""
    ranked = sorted(results, key=lambda m: results[m].summary["mean"])
    interval = results[ranked[0]].summary["interval"]
    by_settings: dict[str, list[str]] = {}
    for m in ranked:
        by_settings.setdefault(settings_of(results[m].config), []).append(f"{m} {_ci_of(results[m].summary)}")
    clauses = "; ".join(f"at {label} ({interval} interval): {', '.join(parts)}"
                        for label, parts in by_settings.items())
    caveat = f". {IMAGENET_CAVEAT}" if any(results[m].config.model == "transfer" for m in ranked) else ""
    return f"{n_folds}-fold twin-grouped CV zero-one risk {clauses} (lowest: {ranked[0]}){caveat}."


def comparison_finding(row: dict, alpha: float = 0.05) -> str:
    """One pair of ``selection.compare_all``, judged by its Holm-adjusted p (the raw one shown too)."""
    better, worse = (row["a"], row["b"]) if row["mean_diff"] < 0 else (row["b"], row["a"])
    verdict = "a significant difference" if row["p_holm"] < alpha else "not a significant difference"
    return (
        f"{better} vs {worse}: CV risk lower by {abs(row['mean_diff']):.3f} (corrected 95% CI of the "
        f"difference [{row['ci_low']:.3f}, {row['ci_high']:.3f}], corrected resampled t-test p = "
        f"{row['p_value']:.3f}, Holm-adjusted {row['p_holm']:.3f}): {verdict} at the {100 * alpha:g}% level "
        "after Holm's correction"
    )


def nested_finding(nested, grid_best_risk: float, model: str, grid_names: Sequence[str], n_outer: int,
                   n_inner: int) -> str:
    s = nested.summary
    chosen = nested.table.groupby(list(grid_names)).size()
    return (
        f"Nested CV ({n_outer} outer x {n_inner} inner folds, twin-grouped, at "
        f"{settings_of(nested.inner[0].best)}) puts the risk of tuning {model} over {', '.join(grid_names)} "
        f"at {_ci_of(s)} ({s['interval']} interval), against {grid_best_risk:.3f} for the best grid entry's "
        f"own CV risk (optimism {s['mean'] - grid_best_risk:+.3f}); the inner searches chose "
        + ("the same configuration in every outer fold." if len(chosen) == 1
           else f"{len(chosen)} different configurations over {n_outer} outer folds.")
    )


def cv_results(cv: dict, comparisons: list[dict], nested, grid_results: dict, findings: list[str],
               synthetic: bool) -> dict:
    """The results file of notebook 07: CV risk per model (corrected interval), comparisons, nested CV."""
    from muffin_lib.selection.evaluation import tuned_name

    def numbers(summary: dict, config, **extra) -> dict:
        return {"cv_risk": summary["mean"], "cv_ci": [summary["ci_low"], summary["ci_high"]],
                "cv_interval": summary["interval"], **extra, "cv_settings": settings_of(config),
                "cv_deployed": _deployed(config)}

    # The transfer row under 08's name, so the summary puts its CV risk beside its test and validation.
    models = {transfer_name(r.config.pretrained) if r.config.model == "transfer" else name:
              numbers(r.summary, r.config, cv_losses=r.losses) for name, r in cv.items()}
    best = grid_results["best_config"]
    models[tuned_name(best)] = numbers(nested.summary, nested.inner[0].best, cv_kind="nested")
    return {"synthetic": synthetic, "models": models, "comparisons": comparisons,
            "nested": {**nested.to_dict(), "grid": grid_results["grid"]}, "tuned_config": best,
            "findings": findings}


def final_test_findings(final) -> list[str]:
    """Notebook 09's sentences; after a forced look each test number says which look it is."""
    label = look_label({"n_looks": final.n_looks})
    look = f"; {label}" if label else ""
    lines = []
    for name, row in final.table.iterrows():
        members = (final.predictions.get(name) or {}).get("members")
        what = (f" (mean of the calibrated probabilities of {', '.join(members)}; no training)" if members
                else "")
        lines.append(
            f"{name}{what}: test zero-one loss on the twin-free part "
            f"{format_ci(row['twin_free'], row['twin_free_low'], row['twin_free_high'])} "
            f"({int(row['twin_free_errors'])} errors in {final.n_twin_free}); on the whole test split "
            f"{format_ci(row['all'], row['all_low'], row['all_high'])} ({final.n_test} images{look})."
        )
    for pair in final.paired:
        verdict = "a tie" if pair["better"] is None else (
            f"{pair['better']} ahead, {'' if pair['significant'] else 'not '}significant at the 5% level")
        lines.append(
            f"{pair['a']} vs {pair['b']} on the twin-free test images: {pair['only_a_wrong']} only "
            f"{pair['a']} gets wrong, {pair['only_b_wrong']} only {pair['b']} (exact McNemar p = "
            f"{pair['p_value']:.3g}, Holm-adjusted {pair['p_holm']:.3g}; {verdict}{look})."
        )
    return lines


def best_by_cv(work_dir, names: Sequence[str]) -> str:
    """The lowest CV risk at the candidates' recipe, else the lowest validation error, else the first."""
    results = load_all_results(work_dir)
    models = (results.get("07_cv_risk") or {}).get("models") or {}
    scored = [name for name in names if models.get(name, {}).get("cv_deployed") and "cv_risk" in models[name]]
    if scored:
        return min(scored, key=lambda name: models[name]["cv_risk"])
    validation = {
        name: numbers["val_zero_one_loss"]
        for result in results.values() if isinstance(result, dict)
        for name, numbers in (result.get("models") or {}).items()
        if isinstance(numbers, dict) and "val_zero_one_loss" in numbers and name in names
    }
    return min(validation, key=validation.get) if validation else list(names)[0]


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


def calibration_finding(model: str, check: dict) -> str:
    """What the reliability diagram says, with the ECE before and after temperature scaling."""
    before, after = check["before"], check["after"]
    ece = f"{model}: expected calibration error {before['ece']:.3f} on {check['n']} twin-free test images"
    if check.get("members"):  # the ensemble (selection.evaluation.ENSEMBLE): no temperature of its own
        return (f"{ece} for the mean of the calibrated probabilities of {', '.join(check['members'])} (each "
                "member's temperature was fitted on its validation split; the ensemble has none of its own).")
    if not check["fitted"]:
        return (f"{ece}; its checkpoint predates temperature scaling, so its probabilities are used as they "
                "are.")
    direction = "overconfident" if check["temperature"] > 1 else "underconfident"
    return (
        f"{model}: on the {check['n']} twin-free test images its raw probabilities have an expected "
        f"calibration error of {before['ece']:.3f}; the temperature {check['temperature']:.2f} fitted on the "
        f"validation split (raw model {direction}) brings it to {after['ece']:.3f}. Accuracy is unchanged "
        f"({after['accuracy']:.3f}): scaling never changes which class wins. `predict` reports these "
        "calibrated probabilities."
    )


def final_results(final, calibration: dict, findings: list[str], synthetic: bool) -> dict:
    """The results block of notebook 09, with the recorded looks at the test split."""
    return {"synthetic": synthetic, **final.to_dict(), "models": final.models_summary(),
            "calibration": calibration, "findings": findings, "n_test_looks": final.n_looks,
            "test_looks": final.looks}
