"""The one test evaluation: every candidate, scored once on the test split after every choice is fixed.

Each candidate is a checkpoint, plus, when the three from-scratch networks are all candidates, their
ensemble (``ENSEMBLE``: the mean of their calibrated probabilities; no training, scored in the same look). Its test predictions are scored on the whole test split and on its
twin-free part (test images with no near-duplicate in train, ``twins``); the twin-free figure is the
headline, since a model may have memorised the train twin of any other test image. Candidates are
compared pairwise on the same twin-free images with exact McNemar tests, Holm-corrected over all pairs.
Every evaluation is recorded in ``work_dir/test_looks.json`` (``muffin_lib.test_looks``); a second look with
another candidate set is refused unless ``allow_new_look``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from muffin_lib.config import CLASSES
from muffin_lib.data.splits import VAL_FRACTION, twin_free_test_images
from muffin_lib.errors import MuffinError
from muffin_lib.training.metrics import scores_by_part

PARTS = ("twin_free", "all", "with_train_twin")
# The notebooks whose checkpoints are candidates (their results files name them under "models").
TRAINING_NOTEBOOKS = ("03_simple_cnn", "04_deeper_cnn", "05_resnet_like", "08_transfer_learning")
# The from-scratch networks (notebooks 03-05) whose ensemble is a candidate when all three are.
ENSEMBLE_MEMBERS = ("simple_cnn", "deeper_cnn", "resnet_like")
ENSEMBLE = f"ensemble({'+'.join(ENSEMBLE_MEMBERS)})"


@dataclass
class FinalTest:
    """Scores of every candidate on the test split and the paired comparisons between them."""

    scores: dict[str, dict]  # name -> scores_by_part
    paired: list[dict]  # stats.paired_mcnemar_table on the twin-free part
    # name -> relpaths, labels, predicted, confidence, correct, probabilities (raw), temperature; an ensemble's
    # probabilities are the mean of its members' calibrated ones, its temperature None, and it names its members
    predictions: dict[str, dict] = field(repr=False, default_factory=dict)
    n_test: int = 0
    n_twin_free: int = 0
    twin_free_paths: list[str] = field(repr=False, default_factory=list)
    n_looks: int = 0  # looks at this test split recorded so far, this one included (test_looks.json)
    looks: list[dict] = field(repr=False, default_factory=list)  # those looks, oldest first
    class_names: tuple[str, ...] = CLASSES  # label i = class_names[i] (the test split's class folders)

    @property
    def table(self):
        """One row per candidate, best twin-free error first."""
        import pandas as pd

        rows = []
        for name, by_part in self.scores.items():
            row = {"model": name}
            for part in PARTS:
                s = by_part[part]
                row.update({f"{part}": s["zero_one_loss"], f"{part}_low": s["ci_low"], f"{part}_high": s["ci_high"]})
                row[f"{part}_errors"] = s["errors"]
            rows.append(row)
        return pd.DataFrame(rows).set_index("model").sort_values("twin_free")

    def to_dict(self) -> dict:
        return {"scores": self.scores, "paired": self.paired, "n_test": self.n_test, "n_twin_free": self.n_twin_free}

    def models_summary(self) -> dict:
        """The ``models`` block of the results file: test numbers per candidate for the summary table."""
        summary = {}
        for name, by_part in self.scores.items():
            free, whole = by_part["twin_free"], by_part["all"]
            summary[name] = {
                "test_twin_free": free["zero_one_loss"],
                "test_twin_free_ci": [free["ci_low"], free["ci_high"]],
                "test_zero_one_loss": whole["zero_one_loss"],
                "test_ci": [whole["ci_low"], whole["ci_high"]],
            }
        return summary


def evaluate_candidates(
    candidates: dict[str, object],
    data_dir,
    work_dir,
    *,
    device: str = "auto",
    alpha: float = 0.05,
    progress: bool = True,
    allow_new_look: bool = False,
    ensemble: bool = True,
) -> FinalTest:
    """Score every checkpoint of ``candidates`` (name -> path) once on the test split of ``data_dir``.

    With ``ensemble`` and all of ``ENSEMBLE_MEMBERS`` among the candidates, their ensemble ``ENSEMBLE`` is scored
    too, like any candidate (table, McNemar pairs, results), from the members' predictions: no training, no other
    look (``ensemble_proba``). Before any prediction the look passes ``test_looks.gate``: recorded in the user's
    cache directory, refused (MuffinError) when it would score a checkpoint never scored on this split after an
    earlier look, unless ``allow_new_look``; checkpoints scored before (a re-run) are not a new look."""
    from muffin_lib import test_looks
    from muffin_lib.data.cache import load_images
    from muffin_lib.selection.stats import paired_mcnemar_table
    from muffin_lib.training import checkpoints, loop

    if not candidates:
        raise MuffinError("no candidates to evaluate: train the models first (notebooks 03-05 and 08)")
    looked = with_ensemble(candidates) if ensemble else dict(candidates)  # what the look record identifies
    all_scores, predictions, free_mask, relpaths = {}, {}, None, None
    for name, checkpoint in candidates.items():
        model, stored = checkpoints.load_checkpoint(checkpoint, device=device)
        test = load_images(data_dir, work_dir, "test", stored["image_size"], stored["color_mode"], progress=progress)
        trained_on = tuple(stored.get("class_names", CLASSES))
        if trained_on != tuple(test.class_names):
            raise MuffinError(
                f"{name}: checkpoint {checkpoint} was trained on the classes {', '.join(trained_on)} but the test split "
                f"of {test.data_dir} holds {', '.join(test.class_names)}; evaluate models trained on this dataset"
            )
        if relpaths is None:  # before any test prediction: the gate refuses a new look unless forced, and records it
            look = test_looks.gate("09_final_test", looked, data_dir, data_fingerprint=test.fingerprint,
                                   allow_new_look=allow_new_look)
            fingerprint = test.fingerprint
            relpaths, free_mask = twin_free_test_images(data_dir, work_dir, test.relpaths)
        elif list(test.relpaths) != relpaths:
            raise MuffinError(f"{name}: its test cache lists other images than the first candidate's; same data_dir?")
        proba = loop.predict_proba(model, test.images, stored["normalization"], device=device)
        predicted = proba.argmax(axis=1)
        correct = predicted == test.labels.numpy()
        all_scores[name] = scores_by_part(correct, free_mask)
        predictions[name] = {
            "relpaths": relpaths,
            "labels": test.labels.tolist(),
            "predicted": predicted.tolist(),
            "confidence": proba.max(axis=1).tolist(),
            "correct": correct.tolist(),
            "probabilities": proba,  # raw; with the checkpoint's temperature, for calibration_check
            "temperature": stored.get("extra", {}).get("temperature"),
        }
    for name, members in looked.items():
        if isinstance(members, dict):
            predictions[name] = _ensemble_prediction([predictions[m] for m in members], list(members))
            all_scores[name] = scores_by_part(np.asarray(predictions[name]["correct"]), free_mask)
    paired = []
    if len(predictions) > 1:
        paired = paired_mcnemar_table(
            {name: np.asarray(p["correct"])[free_mask] for name, p in predictions.items()}, alpha=alpha
        )
    return FinalTest(all_scores, paired, predictions, n_test=len(relpaths), n_twin_free=int(free_mask.sum()),
                     twin_free_paths=[p for p, keep in zip(relpaths, free_mask, strict=True) if keep],
                     n_looks=look["n_looks"], looks=test_looks.looks(fingerprint),
                     class_names=tuple(test.class_names))


def with_ensemble(candidates: dict[str, object]) -> dict[str, object]:
    """``candidates`` plus ``{ENSEMBLE: {member: checkpoint}}`` when every one of ``ENSEMBLE_MEMBERS`` is a candidate."""
    if not all(member in candidates for member in ENSEMBLE_MEMBERS):
        return dict(candidates)
    return {**candidates, ENSEMBLE: {member: candidates[member] for member in ENSEMBLE_MEMBERS}}


def ensemble_proba(members: Sequence[dict]) -> tuple[list[str], np.ndarray]:
    """``(relpaths, probabilities)``: the mean of the members' **calibrated** probabilities (each member's raw test
    probabilities with the temperature fitted on its validation split; 1 for a checkpoint without one), aligned
    by the test images' relative paths (the first member's order). Calibrated, so that no member counts more
    because it is overconfident; the predicted class is the argmax of the mean."""
    from muffin_lib.training.calibration import apply_temperature

    relpaths = list(members[0]["relpaths"])
    total = np.zeros_like(np.asarray(members[0]["probabilities"], dtype=np.float64))
    for member in members:
        where = {path: i for i, path in enumerate(member["relpaths"])}
        if set(where) != set(relpaths):
            raise MuffinError("the ensemble's members were scored on different test images; same data_dir?")
        order = [where[path] for path in relpaths]
        total += apply_temperature(np.asarray(member["probabilities"])[order], float(member["temperature"] or 1.0))
    return relpaths, total / len(members)


def _ensemble_prediction(members: Sequence[dict], names: list[str]) -> dict:
    relpaths, proba = ensemble_proba(members)
    labels = np.asarray(members[0]["labels"])
    predicted = proba.argmax(axis=1)
    return {"relpaths": relpaths, "labels": labels.tolist(), "predicted": predicted.tolist(),
            "confidence": proba.max(axis=1).tolist(), "correct": (predicted == labels).tolist(),
            "probabilities": proba, "temperature": None, "members": names}


def tuned_name(config: dict) -> str:
    """The name of the configuration notebook 06 chose, as notebooks 07 and 09 and the summary show it."""
    return f"{config['model']} tuned (lr={config['lr']:g}, batch {config['batch_size']})"


def collect_candidates(work_dir, notebooks: Sequence[str] = TRAINING_NOTEBOOKS) -> tuple[dict[str, str], list[str]]:
    """``({name: checkpoint}, missing)`` from the results files of the training notebooks: every model
    whose notebook saved a checkpoint path that still exists; ``missing`` says which notebook to run."""
    from muffin_lib.results import load_all_results

    results = load_all_results(work_dir)
    candidates, missing = {}, []
    for name in notebooks:
        models = (results.get(name) or {}).get("models") or {}
        found = {m: n["checkpoint"] for m, n in models.items() if n.get("checkpoint") and Path(n["checkpoint"]).is_file()}
        if not found:
            missing.append(f"{name}.ipynb")
        candidates.update(found)
    return candidates, missing


def tuned_candidate(data_dir, work_dir, tuned_config: dict, candidates: dict[str, str], *, device: str = "auto",
                    val_fraction: float = VAL_FRACTION, progress: bool = True) -> tuple[str, str]:
    """``(name, checkpoint)`` of the configuration notebook 06 chose, for notebook 09. When one of ``candidates``
    (name -> checkpoint, e.g. notebook 03's) was trained with exactly that configuration on the same fit split,
    it IS that model: its name and checkpoint come back and nothing trains, so 09 scores it once (a second copy
    would only add a tie to the paired tests and weaken their correction). Otherwise it is trained on the
    same fit split as the other candidates, into ``checkpoints/tuned.pt``."""
    from muffin_lib.config import WorkDir
    from muffin_lib.training.recipe import TrainConfig
    from muffin_lib.training.train import train_model, trained_checkpoint

    config = TrainConfig.from_dict(tuned_config)
    same = trained_checkpoint(data_dir, work_dir, config, candidates.values(), val_fraction=val_fraction, device=device)
    if same is not None:
        return next(name for name, path in candidates.items() if Path(path) == same), str(same)
    path = WorkDir(work_dir).checkpoints_dir / "tuned.pt"
    run = train_model(data_dir, work_dir, config, val_fraction=val_fraction, device=device, progress=progress,
                      checkpoint_path=path)
    return tuned_name(tuned_config), str(run.checkpoint_path)


def calibration_check(final: FinalTest, name: str, n_bins: int = 10) -> dict:
    """Reliability of candidate ``name``'s probabilities on the twin-free test images, from the predictions
    ``evaluate_candidates`` already made: raw (``before``) and with the temperature fitted on its validation
    split (``after``), each with its ECE; see ``training.calibration``. The ensemble has no temperature of its own
    (its probabilities are already the mean of calibrated ones): ``after`` equals ``before``, ``members`` names them."""
    from muffin_lib.training import calibration

    predicted = final.predictions[name]
    free = np.isin(predicted["relpaths"], final.twin_free_paths)
    raw, labels = predicted["probabilities"][free], np.asarray(predicted["labels"])[free]
    temperature = float(predicted["temperature"] or 1.0)
    before = calibration.reliability(raw, labels, n_bins)
    fitted = predicted["temperature"] is not None  # without one, exactly the raw probabilities (no log/exp round trip)
    return {
        "temperature": temperature,
        "fitted": fitted,
        "before": before,
        "after": calibration.reliability(calibration.apply_temperature(raw, temperature), labels, n_bins) if fitted else before,
        "n": int(free.sum()),
        "members": predicted.get("members"),
    }
