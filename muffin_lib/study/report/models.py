"""Notebooks 03-05 and 08: one model's training, validation errors and results."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from muffin_lib.config import CLASSES
from muffin_lib.results import load_all_results
from muffin_lib.text import plural

__all__ = ["confusion_finding", "confusion_table", "curve_finding", "format_ci", "initialisation_note",
           "initialisation_text", "model_results", "most_confident_errors", "per_class_frame",
           "training_note", "transfer_name", "validation_calibration", "validation_comparison",
           "validation_finding", "validation_summary"]

# Head start, said wherever the pretrained network meets the from-scratch ones (07, 08, README).
IMAGENET_CAVEAT = ("ImageNet has a Chihuahua class and bakery classes: the pretrained network has seen this "
                   "breed and these foods, so this is what a practitioner gets, not a fair contest of "
                   "architectures")


def transfer_name(pretrained: bool) -> str:
    """The transfer model's name in every table and summary row (08's checkpoint, 07's CV, 09's look)."""
    return "pretrained (ImageNet, EfficientNet-Lite0)" if pretrained else "EfficientNet-Lite0, random init"


def format_ci(value: float, low: float | None, high: float | None, digits: int = 3) -> str:
    """``0.102 [0.085, 0.123]``; the interval is left out when it is unknown (NaN/None)."""
    if low is None or high is None or not np.isfinite(low) or not np.isfinite(high):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def validation_summary(val_predictions: dict, confidence: float = 0.95) -> dict:
    """Zero-one loss on the validation images with its Wilson interval, confusion matrix, per-class report."""
    from muffin_lib.training import metrics

    labels = np.asarray(val_predictions["labels"])
    predicted = np.asarray(val_predictions["predicted"])
    class_names = list(val_predictions.get("class_names", CLASSES))
    summary = metrics.scores(labels == predicted, confidence)
    summary["class_names"] = class_names
    summary["confusion"] = metrics.confusion(labels, predicted, len(class_names)).tolist()
    summary["per_class"] = metrics.per_class_report(labels, predicted, class_names)
    return summary


def most_confident_errors(val_predictions: dict, k: int) -> list[dict]:
    """The ``k`` wrong predictions with the highest probability for the predicted class."""
    p = val_predictions
    rows = [{"relpath": path, "label": label, "predicted": guess, "confidence": sure}
            for path, label, guess, sure in zip(p["relpaths"], p["labels"], p["predicted"], p["confidence"],
                                                strict=True) if label != guess]
    return sorted(rows, key=lambda row: row["confidence"], reverse=True)[:k]


def confusion_table(confusion, class_names: Sequence[str] = CLASSES):
    """The confusion matrix as a DataFrame: rows "true <class>", columns "predicted <class>"."""
    import pandas as pd

    return pd.DataFrame(confusion, index=[f"true {c}" for c in class_names],
                        columns=[f"predicted {c}" for c in class_names])


def confusion_finding(confusion, class_names: Sequence[str] = CLASSES) -> str:
    """The errors class by class: "3 of 40 chihuahuas taken for muffins, ..."."""
    parts = []
    for t, row in enumerate(confusion):
        wrong = sorted(((n, class_names[p]) for p, n in enumerate(row) if p != t and n), key=lambda w: -w[0])
        n_wrong = sum(n for n, _ in wrong)
        if len(class_names) == 2:
            parts.append(f"{n_wrong} of {sum(row)} {class_names[t]}s taken for {class_names[1 - t]}s")
        else:
            detail = f" ({', '.join(f'{n} for {name}s' for n, name in wrong)})" if wrong else ""
            parts.append(f"{n_wrong} of {sum(row)} {class_names[t]}s taken for others{detail}")
    return ", ".join(parts)


def curve_finding(model: str, history: Sequence[dict]) -> str:
    """Last and lowest validation zero-one loss, against the training batches' error."""
    last = history[-1]
    values = [h["val_zero_one_loss"] for h in history]
    train_error = 1.0 - last["train_accuracy"]
    return (
        f"{model}: validation zero-one loss {last['val_zero_one_loss']:.3f} after "
        f"{plural(len(history), 'epoch')} (lowest {min(values):.3f}, at epoch {int(np.argmin(values)) + 1}), "
        f"against {train_error:.3f} on the augmented training batches of the last epoch (difference "
        f"{last['val_zero_one_loss'] - train_error:+.3f})."
    )


def validation_finding(model: str, summary: dict) -> str:
    confusion, names = summary["confusion"], summary.get("class_names", CLASSES)
    # the class whose images are most often wrong, and the class they are most often taken for
    share_wrong = [(sum(row) - row[c]) / max(1, sum(row)) for c, row in enumerate(confusion)]
    worst = max(range(len(names)), key=lambda c: share_wrong[c])
    taken = max((p for p in range(len(names)) if p != worst), key=lambda p: confusion[worst][p])
    loss = format_ci(summary["zero_one_loss"], summary["ci_low"], summary["ci_high"])
    return (
        f"{model}: validation zero-one loss {loss} ({summary['errors']} errors in {summary['n']} validation "
        "images, 95% Wilson interval; no twin of a validation image was trained on). Most errors are "
        f"{names[worst]}s taken for {names[taken]}s ({confusion[worst][taken]} of {sum(confusion[worst])}). "
        "The test split is scored once, for every model together, in notebook 09."
    )


def model_results(run, summary: dict, findings: list[str], synthetic: bool, name: str | None = None) -> dict:
    """The results file of a training notebook: config, history, validation scores, the models row."""
    row = {"val_zero_one_loss": summary["zero_one_loss"], "val_ci": [summary["ci_low"], summary["ci_high"]],
           "epochs": len(run.history), "off_recipe": off_recipe(run.config),  # e.g. after `-p epochs 5`
           "train_seconds": sum(h.get("seconds") or 0 for h in run.history), "precision": run.precision,
           "checkpoint": str(run.checkpoint_path)}
    return {"synthetic": synthetic, "config": run.config.to_dict(), "checkpoint": run.checkpoint_path,
            "resumed": run.resumed, "history": run.history,
            "validation": {k: v for k, v in summary.items() if k not in ("confusion", "per_class")},
            "models": {name or run.config.model: row}, "findings": findings}


def off_recipe(config) -> str | None:
    """How ``config`` differs from its recipe in size and schedule (for the summary), or None."""
    from muffin_lib.selection.budget import settings_label
    from muffin_lib.training.recipe import recipe_for

    recipe = recipe_for(config.model, config.train_layers)
    if (config.image_size, config.epochs) == (recipe.image_size, recipe.epochs):
        return None
    if recipe.pretrained:
        return (f"{config.image_size} px, {plural(config.epochs, 'epoch')} "
                f"(not its recipe's {recipe.image_size} px / {recipe.epochs})")
    return settings_label(config.image_size, config.epochs)


def training_note(run) -> str:
    if run.resumed:
        return (f"Reused the checkpoint `{run.checkpoint_path}` (same configuration, data, code and "
                "precision).")
    seconds = sum(h.get("seconds") or 0 for h in run.history)
    return (f"Trained {plural(len(run.history), 'epoch')} in {seconds:.0f} s on {run.device}; "
            f"checkpoint `{run.checkpoint_path}`.")


def validation_comparison(work_dir, summaries: dict[str, dict], others: Sequence[str]):
    """Validation zero-one loss [interval] of ``summaries`` and of the saved models named in ``others``."""
    import pandas as pd

    rows = {name: (s["zero_one_loss"], s["ci_low"], s["ci_high"]) for name, s in summaries.items()}
    saved = {}
    for result in load_all_results(work_dir).values():
        saved.update(result.get("models") or {})
    for name in others:
        numbers = saved.get(name, {})
        if "val_zero_one_loss" in numbers:
            rows[name] = (numbers["val_zero_one_loss"], *numbers["val_ci"])
    return pd.DataFrame(rows, index=["val", "val_low", "val_high"]).T


def validation_calibration(run, n_bins: int = 10) -> tuple[dict, str]:
    """Reliability of ``run``'s validation probabilities, raw and with the temperature fitted on them (the
    ``plots.reliability_diagram`` input), and a sentence that says the second is in-sample."""
    from muffin_lib.training import calibration

    proba, labels = np.asarray(run.val_predictions["probabilities"]), run.val_predictions["labels"]
    scaled = calibration.apply_temperature(proba, run.temperature)
    check = {"temperature": run.temperature, "before": calibration.reliability(proba, labels, n_bins),
             "after": calibration.reliability(scaled, labels, n_bins)}
    direction = "overconfident" if run.temperature > 1 else "underconfident"
    text = (f"Calibration on the {len(labels)} validation photos: expected calibration error "
            f"{check['before']['ece']:.3f} raw (the network is {direction}: temperature "
            f"{run.temperature:.2f}), {check['after']['ece']:.3f} with the temperature, which was fitted on "
            "these same photos, so only notebook 09's test photos check it.")
    return check, text


def initialisation_text(pretrained: bool, use_pretrained: bool) -> str:
    """What notebook 08's network starts from (``use_pretrained``: the ImageNet weights could be loaded)."""
    from muffin_lib.training.models import WEIGHTS_PACKAGE

    if use_pretrained:
        return ("ImageNet-pretrained EfficientNet-Lite0 (timm's tf_efficientnet_lite0, weights from "
                f"{WEIGHTS_PACKAGE})")
    if pretrained:
        return "EfficientNet-Lite0 from RANDOM initialisation (the ImageNet weights could not be loaded)"
    return "EfficientNet-Lite0 from random initialisation (pretrained=False)"


def initialisation_note(init_text: str, weights_note: str | None) -> str:
    note = f"**Initialisation: {init_text}.**"
    if weights_note:
        note += f"\n\n> {weights_note}\n\nEverything below is therefore *not* a transfer-learning result."
    return note


def per_class_frame(per_class: dict):
    """``metrics.per_class_report`` as a table: precision, recall, F1 and integer support per class."""
    import pandas as pd

    rows = {name: scores for name, scores in per_class.items() if name != "accuracy"}
    return pd.DataFrame(rows).T.astype({"support": int}).round(3)
