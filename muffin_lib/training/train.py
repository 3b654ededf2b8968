"""Train one model on the train split and keep a checkpoint; score a checkpoint on a split (``train``
CLI, notebooks 03-05). A checkpoint of the same config key and ``REUSE_KEYS`` is reused: a re-run costs
seconds."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from muffin_lib.config import CLASSES, DEFAULT_DATA_DIR, DEFAULT_WORK_DIR, WorkDir
from muffin_lib.data import imageio
from muffin_lib.data.splits import VAL_FRACTION
from muffin_lib.errors import MuffinError
from muffin_lib.training import calibration, checkpoints, loop, metrics, recipe, runtime

log = logging.getLogger(__name__)

SPLIT_SEED = 0  # the one validation split every notebook and CLI run shares
# What a checkpoint's ``extra`` must match (besides its config key) to be reused.
REUSE_KEYS = ("data_fingerprint", "split", "color_mode", "image_size", "code_version", "preprocess_version",
              "execution")


@dataclass
class TrainRun:
    model: nn.Module  # eval mode
    history: list[dict]
    checkpoint_path: Path
    normalization: dict
    config: recipe.TrainConfig
    device: str
    resumed: bool  # True when the checkpoint was reused instead of training
    val_scores: dict = field(default_factory=dict)  # loss, accuracy, zero_one_loss, errors, n
    # relpaths, labels, predicted, confidence (of the predicted class), probabilities (per class), class_names
    val_predictions: dict = field(default_factory=dict)
    temperature: float = 1.0  # fitted on the validation predictions (calibration.fit_temperature)
    class_names: tuple[str, ...] = CLASSES  # label i = class_names[i]: the data's class folders
    precision: str = ""  # which precision trained it and why, e.g. "bf16: probe 1.73x bf16 vs fp32, ..."


def _predictions(model, images, labels, relpaths, normalization, device, class_names=CLASSES):
    """(scores, per-image predictions, probabilities) of ``model`` on ``images``."""
    proba = loop.predict_proba(model, images, normalization, device=device)
    predicted, labels, rows = proba.argmax(axis=1), np.asarray(labels), np.arange(len(labels))
    loss = float(-np.log(np.clip(proba[rows, labels], 1e-12, None)).mean())
    scores = loop.scores_of(int((predicted != labels).sum()), len(labels), loss)
    predictions = {"relpaths": list(relpaths), "labels": labels.tolist(), "predicted": predicted.tolist(),
                   "confidence": proba[rows, predicted].tolist(), "probabilities": proba.tolist(),
                   "class_names": list(class_names)}
    return scores, predictions, proba


def _reusable(path: Path, config: recipe.TrainConfig, extra: dict) -> dict | None:
    """The checkpoint at ``path`` when its config key and ``REUSE_KEYS`` match, else None."""
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file is simply retrained
        log.warning("ignoring unreadable checkpoint %s (%s); training again", path, error)
        return None
    if not isinstance(checkpoint, dict) or checkpoint.get("config_key") != config.key():
        return None
    stored = checkpoint.get("extra", {})
    if not isinstance(stored, dict) or any(stored.get(k) != extra[k] for k in REUSE_KEYS):
        return None
    return checkpoint


def _fit_split(data_dir, work_dir, config: recipe.TrainConfig, val_fraction: float, progress: bool):
    """The training cache ``config`` needs and the shared fit/validation split plan over it."""
    from muffin_lib.data.cache import load_images
    from muffin_lib.data.splits import plan_for_cache

    cache = load_images(data_dir, work_dir, "train", config.image_size, config.color_mode, progress=progress)
    return cache, plan_for_cache(cache, work_dir, val_fraction=val_fraction, seed=SPLIT_SEED)


def _checkpoint_extra(cache, plan, config: recipe.TrainConfig, device: str) -> dict:
    """What a checkpoint of ``config`` trained on ``cache``'s fit split records (``REUSE_KEYS``: reuse)."""
    return {"data_fingerprint": cache.fingerprint, "data_dir": str(cache.data_dir),
            "synthetic": bool(cache.synthetic), "split": plan.identity, "image_size": config.image_size,
            "color_mode": config.color_mode, "n_train": len(plan.train_idx), "n_val": len(plan.val_idx),
            "code_version": recipe.CODE_VERSION, "preprocess_version": imageio.PREPROCESS_VERSION,
            "execution": runtime.execution_key(config.amp, device, config),
            "precision": runtime.precision_reason(config.amp, device, config)}  # for logs and the summary


def trained_checkpoint(data_dir, work_dir, config: recipe.TrainConfig, paths, *,
                       val_fraction: float = VAL_FRACTION, device: str = "auto") -> Path | None:
    """The first of the checkpoint ``paths`` that :func:`train_model` would reuse for ``config``, or None."""
    cache, plan = _fit_split(data_dir, work_dir, config, val_fraction, progress=False)
    extra = _checkpoint_extra(cache, plan, config, device)
    return next((Path(path) for path in paths if _reusable(Path(path), config, extra) is not None), None)


def check_writable(path: Path) -> None:
    """Refuse a checkpoint path that cannot be written (a directory, a read-only folder) before training."""
    if path.is_dir():
        raise MuffinError(f"--out {path} is a directory; give a file path such as {path / 'model.pt'}")
    folder = next((p for p in [path.parent, *path.parent.parents] if p.exists()), None)
    if folder is None or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise MuffinError(f"--out {path}: cannot write in {folder or path.parent}; choose a writable place")


def _save_or_rescue(path: Path, workdir: WorkDir, result, class_names, extra: dict) -> None:
    """Save the checkpoint; if that fails after training, save it in work_dir instead and say where."""
    try:
        checkpoints.save_checkpoint(path, result, class_names=class_names, extra=extra)
    except OSError as error:
        rescued = workdir.checkpoints_dir / f"{path.stem}-rescued-{int(time.time())}.pt"
        checkpoints.save_checkpoint(rescued, result, class_names=class_names, extra=extra)
        raise MuffinError(f"could not write the checkpoint {path} ({error}); the trained model is saved "
                          f"as {rescued}") from None


def train_model(data_dir, work_dir, config: recipe.TrainConfig, *, val_fraction: float = VAL_FRACTION,
                device: str = "auto", progress: bool = True, checkpoint_path=None,
                resume: bool = True) -> TrainRun:
    """Fit ``config`` on the training part of the split, validate on its validation part, save a checkpoint
    (default ``work_dir/checkpoints/<model>.pt``); with ``resume`` a matching one is loaded instead."""
    path = Path(checkpoint_path or WorkDir(work_dir).checkpoints_dir / f"{config.model}.pt")
    check_writable(path)
    cache, plan = _fit_split(data_dir, work_dir, config, val_fraction, progress)
    extra = _checkpoint_extra(cache, plan, config, device)
    train_idx = torch.as_tensor(plan.train_idx, dtype=torch.int64)
    val_idx = torch.as_tensor(plan.val_idx, dtype=torch.int64)
    val_images, val_labels = cache.images[val_idx], cache.labels[val_idx]
    checkpoint = _reusable(path, config, extra) if resume else None
    if checkpoint is not None:
        model, checkpoint = checkpoints.load_checkpoint(path, device=device)
        history, normalization = checkpoint["history"], checkpoint["normalization"]
        used_device = str(runtime.resolve_device(device))
        class_names = tuple(checkpoint.get("class_names", CLASSES))
        log.info("reusing checkpoint %s (same config %s and data); delete it to train again", path,
                 config.key())
    else:
        train = (cache.images[train_idx], cache.labels[train_idx])
        result = loop.fit(config, train, (val_images, val_labels), device=device, progress=progress,
                          num_classes=len(cache.class_names))
        model, history, normalization = result.model, result.history, result.normalization
        used_device, class_names = result.device, cache.class_names
    val_relpaths = [cache.relpaths[i] for i in plan.val_idx]
    scores, predictions, proba = _predictions(model, val_images, val_labels, val_relpaths, normalization,
                                              used_device, class_names)
    if checkpoint is None:
        # Calibrated on the validation predictions only; the temperature never changes a predicted class.
        extra["temperature"] = calibration.fit_temperature(proba, val_labels.numpy())
        _save_or_rescue(path, WorkDir(work_dir), result, cache.class_names, extra)
    kept = (checkpoint or {"extra": extra}).get("extra", {})
    return TrainRun(model=model, history=history, checkpoint_path=path, normalization=normalization,
                    config=config, device=used_device, resumed=checkpoint is not None, val_scores=scores,
                    val_predictions=predictions, temperature=float(kept.get("temperature", 1.0)),
                    class_names=tuple(class_names), precision=kept.get("precision", ""))


def evaluate_on_split(checkpoint, data_dir, work_dir, split: str = "test", *, device: str = "auto",
                      confidence: float = 0.95, progress: bool = True, allow_new_look: bool = False) -> dict:
    """Score a checkpoint on ``split`` (JSON-friendly): zero-one loss, Wilson interval, twin-free part,
    confusion, per-class report, per-file predictions; the test split only past ``test_looks.gate``."""
    from muffin_lib import test_looks
    from muffin_lib.data.cache import load_images
    from muffin_lib.data.splits import twin_free_test_images

    model, stored = checkpoints.load_checkpoint(checkpoint, device=device)
    cache = load_images(data_dir, work_dir, split, stored["image_size"], stored["color_mode"],
                        progress=progress)
    class_names = list(stored.get("class_names", CLASSES))  # checkpoints before class names: the default two
    if list(cache.class_names) != class_names:
        raise MuffinError(
            f"checkpoint {checkpoint} was trained on the classes {', '.join(class_names)} but "
            f"{cache.data_dir} holds {', '.join(cache.class_names)}; score it on a dataset with its classes, "
            "or train a model on this one")
    look, twin_free, name = None, None, stored["model_name"]
    if split == "test":  # the gate before any prediction: recorded first, refused if it would be a new look
        keys = {name: stored.get("config_key")}
        look = test_looks.gate("evaluate_on_split", {name: checkpoint}, data_dir, config_keys=keys,
                               data_fingerprint=cache.fingerprint, allow_new_look=allow_new_look)
    scores, predictions, _ = _predictions(model, cache.images, cache.labels, cache.relpaths,
                                          stored["normalization"], device, class_names)
    low, high = metrics.binomial_interval(scores["errors"], scores["n"], confidence)
    y_true, y_pred = predictions["labels"], predictions["predicted"]
    if split == "test":
        _, free = twin_free_test_images(data_dir, work_dir, cache.relpaths)
        correct = np.asarray(y_true) == np.asarray(y_pred)
        twin_free = metrics.scores_by_part(correct, free, confidence)["twin_free"]
    return {
        "checkpoint": str(checkpoint), "model": name, "split": split, "synthetic": bool(cache.synthetic),
        **scores, "ci_low": low, "ci_high": high, "confidence": confidence,
        "twin_free": twin_free,  # test images with no twin in train (None for other splits)
        "n_test_looks": look and look["n_looks"],  # looks at this test split so far
        "class_names": class_names,
        "confusion": metrics.confusion(y_true, y_pred, len(class_names)).tolist(),
        "per_class": metrics.per_class_report(y_true, y_pred, class_names),
        "predictions": [
            {"relpath": r, "label": class_names[t], "predicted": class_names[p],
             "probabilities": dict(zip(class_names, q, strict=True)), "correct": t == p}
            for r, t, p, q in zip(predictions["relpaths"], y_true, y_pred, predictions["probabilities"],
                                  strict=True)
        ],
    }


# ----------------------------------------------------------------------------- CLI


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value in ("1", "true", "yes", "on")
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_setting_flag(parser: argparse.ArgumentParser, item: dataclasses.Field) -> None:
    """One ``--flag`` for a TrainConfig field: its type, choices and default read off the field itself."""
    flags = ["--" + item.name.replace("_", "-")]
    flags += ["--early-stopping"] if item.name == "early_stopping_patience" else []
    default, choices = item.default, recipe.setting_choices().get(item.name)
    shown = "off" if default is None else default
    help_text = f"{recipe.SETTING_HELP.get(item.name, item.name)} (default: {shown})"
    # default None: a flag not given takes the model's own recipe (config_from_args), a given one always wins.
    if isinstance(default, bool):  # --compile alone means true, as before; --compile false too
        parser.add_argument(*flags, dest=item.name, type=parse_bool, nargs="?", const=True, default=None,
                            metavar="true|false", help=help_text)
    elif choices:
        parser.add_argument(*flags, dest=item.name, choices=choices, default=None, help=help_text)
    else:
        kind = int if default is None else type(default)
        parser.add_argument(*flags, dest=item.name, type=kind, default=None,
                            metavar="N" if kind is int else "X", help=help_text)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Every TrainConfig field as a flag (the recipe's defaults shown), then where data and results go."""
    for item in dataclasses.fields(recipe.TrainConfig):
        _add_setting_flag(parser, item)
    add = parser.add_argument
    add("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="dataset folder (default: %(default)s)")
    add("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
        help="split, cache and checkpoints (default: %(default)s)")
    add("--val-fraction", type=float, default=VAL_FRACTION,
        help="share of the training split held out for validation (default: %(default)s)")
    add("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: auto)")
    add("--out", type=Path, default=None, metavar="CKPT",
        help="checkpoint path (default: WORK_DIR/checkpoints/MODEL.pt)")
    add("--no-resume", action="store_true", help="train even if a matching checkpoint exists")
    add("--quiet", action="store_true", help="no progress bars")
    add("--json", action="store_true", help="last line: one JSON object with the results")


def format_history(history: list[dict]) -> str:
    columns = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_zero_one_loss", "lr", "seconds",
               "images_per_s"]
    lines = ["  ".join(f"{c:>17s}" if c != "epoch" else "epoch" for c in columns)]
    for record in history:
        cells = [f"{'-':>17s}" if record.get(c) is None else f"{record[c]:17.4g}" for c in columns[1:]]
        lines.append("  ".join([f"{record['epoch']:5d}", *cells]))
    return "\n".join(lines)


def config_from_args(args: argparse.Namespace) -> recipe.TrainConfig:
    """The ``TrainConfig`` of ``train``'s flags: the model's own recipe (``recipe.recipe_for``) with every
    flag given on top; a bad value named by its flag."""
    given = {item.name: getattr(args, item.name) for item in dataclasses.fields(recipe.TrainConfig)
             if getattr(args, item.name) is not None}
    own = recipe.recipe_for(given.get("model", recipe.TrainConfig().model), given.get("train_layers"))
    try:
        return own.replace(**given)
    except MuffinError as error:
        name, _, rest = str(error).partition(": ")
        raise MuffinError(f"--{name.replace('_', '-')}: {rest}" if name in given else str(error)) from None


def train_command(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    run = train_model(args.data_dir, args.work_dir, config, val_fraction=args.val_fraction,
                      device=args.device, progress=not args.quiet, checkpoint_path=args.out,
                      resume=not args.no_resume)
    scores = run.val_scores
    if args.json:
        print(json.dumps({"checkpoint": str(run.checkpoint_path), "resumed": run.resumed,
                          "config": config.to_dict(), "config_key": config.key(), "device": run.device,
                          "val": scores, "history": run.history}))
        return 0
    print(format_history(run.history))
    print(f"validation zero-one loss {scores['zero_one_loss']:.4f} ({scores['errors']}/{scores['n']}); "
          f"checkpoint {'reused' if run.resumed else 'saved'}: {run.checkpoint_path}")
    return 0
