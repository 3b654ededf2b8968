"""Notebooks 03-05 and 08: one model's training, validation errors and results."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from muffin_lib.config import CLASSES
from muffin_lib.study.report.text import format_ci
from muffin_lib.text import plural

# ----------------------------------------------------------------------------- one model (03-05, 08)


def validation_summary(val_predictions: dict, confidence: float = 0.95) -> dict:
    """Zero-one loss on the validation images with its Wilson interval, confusion matrix, per-class report."""
    from muffin_lib.training import metrics
    from muffin_lib.training.metrics import scores

    labels = np.asarray(val_predictions["labels"])
    predicted = np.asarray(val_predictions["predicted"])
    class_names = list(val_predictions.get("class_names", CLASSES))
    summary = scores(labels == predicted, confidence)
    summary["class_names"] = class_names
    summary["confusion"] = metrics.confusion(labels, predicted, len(class_names)).tolist()
    summary["per_class"] = metrics.per_class_report(labels, predicted, class_names)
    return summary


def most_confident_errors(val_predictions: dict, k: int) -> list[dict]:
    """The ``k`` wrong predictions with the highest probability for the predicted class."""
    rows = []
    for path, label, guess, sure in zip(val_predictions["relpaths"], val_predictions["labels"],
                                        val_predictions["predicted"], val_predictions["confidence"], strict=True):
        if label != guess:
            rows.append({"relpath": path, "label": label, "predicted": guess, "confidence": sure})
    return sorted(rows, key=lambda row: row["confidence"], reverse=True)[:k]


def confusion_table(confusion, class_names: Sequence[str] = CLASSES):
    """The confusion matrix as a DataFrame: rows "true <class>", columns "predicted <class>"."""
    import pandas as pd

    return pd.DataFrame(confusion, index=[f"true {c}" for c in class_names],
                        columns=[f"predicted {c}" for c in class_names])


def confusion_finding(confusion, class_names: Sequence[str] = CLASSES) -> str:
    """The errors class by class, e.g. "3 of 40 chihuahuas taken for muffins, 5 of 41 muffins taken for
    chihuahuas" (with more than two classes: "5 of 41 muffins taken for others (4 for chihuahuas, 1 for cakes)")."""
    parts = []
    for t, row in enumerate(confusion):
        wrong = sorted(((n, class_names[p]) for p, n in enumerate(row) if p != t and n), key=lambda item: -item[0])
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
    best_epoch = int(np.argmin(values)) + 1
    train_error = 1.0 - last["train_accuracy"]
    return (
        f"{model}: validation zero-one loss {last['val_zero_one_loss']:.3f} after "
        f"{plural(len(history), 'epoch')} (lowest {min(values):.3f}, at epoch {best_epoch}), against {train_error:.3f} on the augmented training "
        f"batches of the last epoch (difference {last['val_zero_one_loss'] - train_error:+.3f})."
    )


def validation_finding(model: str, summary: dict) -> str:
    confusion = summary["confusion"]
    names = summary.get("class_names", CLASSES)
    # the class whose images are most often wrong, and the class they are most often taken for
    worst = max(range(len(names)), key=lambda c: (sum(confusion[c]) - confusion[c][c]) / max(1, sum(confusion[c])))
    taken = max((p for p in range(len(names)) if p != worst), key=lambda p: confusion[worst][p])
    return (
        f"{model}: validation zero-one loss "
        f"{format_ci(summary['zero_one_loss'], summary['ci_low'], summary['ci_high'])} ({summary['errors']} errors "
        f"in {summary['n']} validation images, 95% Wilson interval; no twin of a validation image was trained on). "
        f"Most errors are {names[worst]}s taken for {names[taken]}s ({confusion[worst][taken]} of "
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
                "off_recipe": off_recipe(run.config),  # e.g. `-p epochs 5` or the smoke profile; None at the recipe
                "train_seconds": seconds,
                "precision": run.precision,
                "checkpoint": str(run.checkpoint_path),
            }
        },
        "findings": findings,
    }


def off_recipe(config) -> str | None:
    """How ``config`` differs from its recipe in size and schedule (``recipe.TrainConfig``, or
    ``TRANSFER_RECIPE`` for the transfer model), for the summary beside the model's name; None when it does not."""
    from muffin_lib.selection.budget import settings_label
    from muffin_lib.training.recipe import TRANSFER_RECIPE, recipe_for

    recipe = recipe_for(config.model)
    if (config.image_size, config.epochs) == (recipe.image_size, recipe.epochs):
        return None
    if recipe is TRANSFER_RECIPE:
        return (f"{config.image_size} px, {plural(config.epochs, 'epoch')} "
                f"(not its recipe's {recipe.image_size} px / {recipe.epochs})")
    return settings_label(config.image_size, config.epochs)


def training_note(run) -> str:
    seconds = sum(h.get("seconds") or 0 for h in run.history)
    if run.resumed:
        return f"Reused the checkpoint `{run.checkpoint_path}` (same configuration, data, code and precision)."
    return (f"Trained {plural(len(run.history), 'epoch')} in {seconds:.0f} s on {run.device}; "
            f"checkpoint `{run.checkpoint_path}`.")


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


def initialisation_text(pretrained: bool, use_pretrained: bool) -> str:
    """What notebook 08's network starts from, given ``pretrained`` (asked for) and ``use_pretrained``
    (``training.models.try_pretrained``'s answer: the weights could be loaded)."""
    from muffin_lib.training.models import WEIGHTS_PACKAGE

    if use_pretrained:
        return f"ImageNet-pretrained EfficientNet-Lite0 (timm's tf_efficientnet_lite0, weights from {WEIGHTS_PACKAGE})"
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
