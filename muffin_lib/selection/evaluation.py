"""The one test evaluation: every candidate, scored once on the test split after every choice is fixed.

Candidates are checkpoints, plus the ensemble of the three from-scratch networks (``ENSEMBLE``) when all are
candidates. Each is scored on the whole test split and on its twin-free part (no near-duplicate in train: the
headline), and compared pairwise there by exact McNemar tests, Holm-corrected. Every look is recorded in
``test_looks``; a look with a new candidate set is refused unless ``allow_new_look``.
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
    # name -> relpaths, labels, predicted, confidence, correct, probabilities (raw), temperature (+ members)
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
                row.update({part: s["zero_one_loss"], f"{part}_low": s["ci_low"],
                            f"{part}_high": s["ci_high"], f"{part}_errors": s["errors"]})
            rows.append(row)
        return pd.DataFrame(rows).set_index("model").sort_values("twin_free")

    def to_dict(self) -> dict:
        return {"scores": self.scores, "paired": self.paired, "n_test": self.n_test,
                "n_twin_free": self.n_twin_free}

    def models_summary(self) -> dict:
        """The ``models`` block of the results file: test numbers per candidate for the summary table."""
        return {name: {"test_twin_free": by_part["twin_free"]["zero_one_loss"],
                       "test_twin_free_ci": [by_part["twin_free"]["ci_low"], by_part["twin_free"]["ci_high"]],
                       "test_zero_one_loss": by_part["all"]["zero_one_loss"],
                       "test_ci": [by_part["all"]["ci_low"], by_part["all"]["ci_high"]]}
                for name, by_part in self.scores.items()}


def evaluate_candidates(candidates: dict[str, object], data_dir, work_dir, *, device: str = "auto",
                        alpha: float = 0.05, progress: bool = True, allow_new_look: bool = False,
                        ensemble: bool = True) -> FinalTest:
    """Score every checkpoint of ``candidates`` (name -> path) once on the test split of ``data_dir``.

    With ``ensemble`` and all of ``ENSEMBLE_MEMBERS`` among them, ``ENSEMBLE`` is scored too, from the
    members' predictions (no training, no other look). Before any prediction the look passes
    ``test_looks.gate``, which refuses (MuffinError) to score a checkpoint never scored on this split after an
    earlier look, unless ``allow_new_look``; a re-run of the same candidates is not a new look."""
    from muffin_lib import test_looks
    from muffin_lib.selection.stats import paired_mcnemar_table
    from muffin_lib.training import loop

    if not candidates:
        raise MuffinError("no candidates to evaluate: train the models first (notebooks 03-05 and 08)")
    looked = with_ensemble(candidates) if ensemble else dict(candidates)  # what the look record identifies
    predictions, relpaths = {}, None
    for name, checkpoint in candidates.items():
        model, stored, test = _load_candidate(name, checkpoint, data_dir, work_dir, device, progress)
        if relpaths is None:  # before any prediction: the gate records the look, or refuses a new one
            look = test_looks.gate("09_final_test", looked, data_dir, data_fingerprint=test.fingerprint,
                                   allow_new_look=allow_new_look)
            fingerprint = test.fingerprint
            relpaths, free_mask = twin_free_test_images(data_dir, work_dir, test.relpaths)
        elif list(test.relpaths) != relpaths:
            raise MuffinError(f"{name}: its test cache lists other images than the first candidate's; "
                              "same data_dir?")
        proba = loop.predict_proba(model, test.images, stored["normalization"], device=device)
        temperature = stored.get("extra", {}).get("temperature")
        predictions[name] = _prediction(relpaths, test.labels.numpy(), proba, temperature)
    for name, members in looked.items():
        if isinstance(members, dict):
            paths, proba = ensemble_proba([predictions[m] for m in members])
            labels = np.asarray(predictions[next(iter(members))]["labels"])
            predictions[name] = _prediction(paths, labels, proba, None, members=list(members))
    scores = {name: scores_by_part(np.asarray(p["correct"]), free_mask) for name, p in predictions.items()}
    free_correct = {name: np.asarray(p["correct"])[free_mask] for name, p in predictions.items()}
    paired = paired_mcnemar_table(free_correct, alpha=alpha) if len(predictions) > 1 else []
    return FinalTest(scores, paired, predictions, n_test=len(relpaths), n_twin_free=int(free_mask.sum()),
                     twin_free_paths=[p for p, keep in zip(relpaths, free_mask, strict=True) if keep],
                     n_looks=look["n_looks"], looks=test_looks.looks(fingerprint),
                     class_names=tuple(test.class_names))


def _load_candidate(name: str, checkpoint, data_dir, work_dir, device: str, progress: bool) -> tuple:
    """``(model, stored checkpoint, test cache)`` of one candidate, refused when trained on other classes."""
    from muffin_lib.data.cache import load_images
    from muffin_lib.training import checkpoints

    model, stored = checkpoints.load_checkpoint(checkpoint, device=device)
    test = load_images(data_dir, work_dir, "test", stored["image_size"], stored["color_mode"],
                       progress=progress)
    trained_on = tuple(stored.get("class_names", CLASSES))
    if trained_on != tuple(test.class_names):
        raise MuffinError(
            f"{name}: checkpoint {checkpoint} was trained on the classes {', '.join(trained_on)} but the "
            f"test split of {test.data_dir} holds {', '.join(test.class_names)}; evaluate models trained on "
            "this dataset"
        )
    return model, stored, test


def _prediction(relpaths: list[str], labels: np.ndarray, proba: np.ndarray, temperature, **extra) -> dict:
    """What ``FinalTest.predictions`` holds of a candidate; ``probabilities`` raw, for calibration_check."""
    predicted = proba.argmax(axis=1)
    return {"relpaths": relpaths, "labels": labels.tolist(), "predicted": predicted.tolist(),
            "confidence": proba.max(axis=1).tolist(), "correct": (predicted == labels).tolist(),
            "probabilities": proba, "temperature": temperature, **extra}


def with_ensemble(candidates: dict[str, object]) -> dict[str, object]:
    """``candidates`` plus ``{ENSEMBLE: {member: checkpoint}}`` when all its members are candidates."""
    if not all(member in candidates for member in ENSEMBLE_MEMBERS):
        return dict(candidates)
    return {**candidates, ENSEMBLE: {member: candidates[member] for member in ENSEMBLE_MEMBERS}}


def ensemble_proba(members: Sequence[dict]) -> tuple[list[str], np.ndarray]:
    """``(relpaths, probabilities)``: the mean of the members' calibrated probabilities (temperature 1 for
    a checkpoint without one), so that no member counts more for being overconfident; in the first's order."""
    from muffin_lib.training.calibration import apply_temperature

    relpaths = list(members[0]["relpaths"])
    total = np.zeros_like(np.asarray(members[0]["probabilities"], dtype=np.float64))
    for member in members:
        where = {path: i for i, path in enumerate(member["relpaths"])}
        if set(where) != set(relpaths):
            raise MuffinError("the ensemble's members were scored on different test images; same data_dir?")
        order = [where[path] for path in relpaths]
        temperature = float(member["temperature"] or 1.0)
        total += apply_temperature(np.asarray(member["probabilities"])[order], temperature)
    return relpaths, total / len(members)


def tuned_name(config: dict) -> str:
    """The name of the configuration notebook 06 chose, as notebooks 07 and 09 and the summary show it."""
    return f"{config['model']} tuned (lr={config['lr']:g}, batch {config['batch_size']})"


def collect_candidates(work_dir, notebooks: Sequence[str] = TRAINING_NOTEBOOKS) -> tuple[dict, list[str]]:
    """``({name: checkpoint}, missing)`` from the results files of the training notebooks: every model
    whose notebook saved a checkpoint path that still exists; ``missing`` says which notebook to run."""
    from muffin_lib.results import load_all_results

    results = load_all_results(work_dir)
    candidates, missing = {}, []
    for name in notebooks:
        models = (results.get(name) or {}).get("models") or {}
        found = {m: n["checkpoint"] for m, n in models.items()
                 if n.get("checkpoint") and Path(n["checkpoint"]).is_file()}
        if not found:
            missing.append(f"{name}.ipynb")
        candidates.update(found)
    return candidates, missing


def tuned_candidate(data_dir, work_dir, tuned_config: dict, candidates: dict[str, str], *,
                    device: str = "auto", val_fraction: float = VAL_FRACTION,
                    progress: bool = True) -> tuple[str, str]:
    """``(name, checkpoint)`` of the configuration notebook 06 chose, for notebook 09: one of ``candidates``
    trained with exactly it on the same fit split IS that model (a copy would only add a tie to the paired
    tests); otherwise it is trained on that split into ``checkpoints/tuned.pt``."""
    from muffin_lib.config import WorkDir
    from muffin_lib.training.recipe import TrainConfig
    from muffin_lib.training.train import train_model, trained_checkpoint

    config = TrainConfig.from_dict(tuned_config)
    same = trained_checkpoint(data_dir, work_dir, config, candidates.values(), val_fraction=val_fraction,
                              device=device)
    if same is not None:
        return next(name for name, path in candidates.items() if Path(path) == same), str(same)
    run = train_model(data_dir, work_dir, config, val_fraction=val_fraction, device=device, progress=progress,
                      checkpoint_path=WorkDir(work_dir).checkpoints_dir / "tuned.pt")
    return tuned_name(tuned_config), str(run.checkpoint_path)


def calibration_check(final: FinalTest, name: str, n_bins: int = 10) -> dict:
    """Reliability (with ECE) of candidate ``name``'s twin-free test probabilities from ``final``: raw
    (``before``) and with its fitted temperature (``after``; the ensemble has none: ``before``)."""
    from muffin_lib.training import calibration

    predicted = final.predictions[name]
    free = np.isin(predicted["relpaths"], final.twin_free_paths)
    raw, labels = predicted["probabilities"][free], np.asarray(predicted["labels"])[free]
    temperature = float(predicted["temperature"] or 1.0)
    before = calibration.reliability(raw, labels, n_bins)
    fitted = predicted["temperature"] is not None  # without one, exactly the raw probabilities
    after = before
    if fitted:
        after = calibration.reliability(calibration.apply_temperature(raw, temperature), labels, n_bins)
    return {"temperature": temperature, "fitted": fitted, "before": before, "after": after,
            "n": int(free.sum()), "members": predicted.get("members")}
