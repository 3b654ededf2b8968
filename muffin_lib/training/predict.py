"""Classify image files or folders with a checkpoint: ``predict_paths`` and the ``predict`` CLI. Files in a
folder named after a class count as labelled (zero-one loss reported); a dataset's test images are a look at
its test split and pass ``test_looks.gate`` first."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from muffin_lib import test_looks
from muffin_lib.config import CLASSES, IMAGE_EXTENSIONS, channels_for
from muffin_lib.data.imageio import load_image, preprocess_image
from muffin_lib.errors import MuffinError
from muffin_lib.progress import progress_bar
from muffin_lib.text import plural
from muffin_lib.training import calibration, checkpoints, loop, metrics, recipe


def _expand(paths) -> list[tuple[Path, str | None]]:
    """(file, problem) for every image under ``paths``: files as given, folders recursively (sorted)."""
    found: list[tuple[Path, str | None]] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found += [(f, None) for f in sorted(
                Path(root) / name for root, _, names in os.walk(path) for name in names
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."))]
        else:
            found.append((path, None if path.is_file() else "no such file or folder"))
    return found


def label_from_path(path: Path, class_names=CLASSES) -> int | None:
    """The class index when the file's folder is named after one of ``class_names`` (any case), else None."""
    folder, names = path.parent.name.lower(), [name.lower() for name in class_names]
    return names.index(folder) if folder in names else None


def recipe_shortfall(stored: dict) -> str | None:
    """How a checkpoint falls short of its recipe in size or epochs ("32 px, 1 epoch where ..."), or None."""
    own = recipe.recipe_for(stored["model_name"], stored.get("config", {}).get("train_layers", "all"))
    size, epochs = stored["image_size"], stored.get("config", {}).get("epochs", own.epochs)
    if size >= own.image_size and epochs >= own.epochs:
        return None
    return (f"{size} px, {plural(epochs, 'epoch')} where its recipe has {own.image_size} px, "
            f"{plural(own.epochs, 'epoch')}")


def checkpoint_warnings(stored: dict) -> list[str]:
    """One line per reason the checkpoint's answers on real photos deserve little trust."""
    found = []
    if stored.get("extra", {}).get("synthetic"):
        found.append("this checkpoint was trained on SYNTHETIC data: its predictions on real photos mean "
                     "nothing")
    shortfall = recipe_shortfall(stored)
    if shortfall is not None:
        found.append(f"this checkpoint was trained off its recipe ({shortfall}): expect more errors than its "
                     "recipe's")
    return found


def _read_image(path: Path, image_size: int, color_mode: str):
    """(model input, warning or None): decoded once, its size checked before it is squared."""
    draft_mode = "L" if channels_for(color_mode) == 1 else "RGB"  # as preprocess_image drafts a path
    image = load_image(path, draft_mode=draft_mode, draft_size=image_size)
    width, height = image.size  # a JPEG draft never goes below image_size, so a small image keeps its size
    warning = None
    if min(width, height) < image_size:
        warning = (f"{path} is {width}x{height} px: upscaled to {image_size} px, so its prediction means "
                   "little")
    return preprocess_image(image, image_size, color_mode), warning


def _read_chunk(chunk, stored: dict, class_names: list[str]) -> tuple[list[dict], list[torch.Tensor]]:
    """One entry per file of ``chunk`` (error set when unreadable) and the inputs of the readable ones."""
    entries, tensors = [], []
    for path, problem in chunk:
        true = label_from_path(path, class_names)
        entry = {"path": str(path), "label": None, "probability": None, "probabilities": None,
                 "true_label": class_names[true] if true is not None else None, "correct": None,
                 "error": problem, "warning": None}
        if problem is None:
            try:
                tensor, entry["warning"] = _read_image(path, stored["image_size"], stored["color_mode"])
                tensors.append(tensor)
            except MuffinError as error:
                entry["error"] = getattr(error, "reason", None) or str(error)
        entries.append(entry)
    return entries, tensors


def _classify(model, stored: dict, files, batch_size: int, progress: bool, explain_dir) -> list[dict]:
    """One entry per file, read and predicted ``batch_size`` at a time with calibrated probabilities."""
    class_names = list(stored.get("class_names", CLASSES))
    # Calibrated probabilities: the temperature fitted on the validation split (1.0 for older checkpoints).
    temperature = float(stored.get("extra", {}).get("temperature", 1.0))
    predictions: list[dict] = []
    starts = range(0, len(files), batch_size)
    for start in progress_bar(starts, enabled=progress, desc="predict", unit="batch"):
        entries, tensors = _read_chunk(files[start : start + batch_size], stored, class_names)
        predictions += entries
        if not tensors:
            continue
        proba = loop.predict_proba(model, torch.stack(tensors), stored["normalization"],
                                   device=next(model.parameters()).device, batch_size=batch_size)
        proba = calibration.apply_temperature(proba, temperature)
        readable = [e for e in entries if e["error"] is None]
        if explain_dir is not None:
            _write_explanations(model, torch.stack(tensors), stored["normalization"], readable,
                                Path(explain_dir))
        for entry, p in zip(readable, proba, strict=True):
            k = int(np.argmax(p))
            entry.update(label=class_names[k], probability=float(p[k]),
                         probabilities={name: float(q) for name, q in zip(class_names, p, strict=True)})
            if entry["true_label"] is not None:
                entry["correct"] = entry["label"] == entry["true_label"]
    return predictions


def predict_paths(checkpoint, paths, *, device: str = "auto", batch_size: int = 64, progress: bool = False,
                  work_dir=None, explain_dir=None, allow_new_look: bool = False) -> dict:
    """Predict every image under ``paths``: one dict per file, ``warnings``, counts and, for labelled files,
    ``zero_one_loss`` with a 95 % Wilson interval (``twin_free`` on test images, twins cached in work_dir).
    ``explain_dir``: Grad-CAM PNGs there. Test images pass ``test_looks.gate`` first (``allow_new_look``)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    model, stored = checkpoints.load_checkpoint(checkpoint, device=device)
    files = _expand(paths)
    if not files:
        raise MuffinError(f"no images found under {', '.join(map(str, paths))} "
                          f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
    readable = [f for f, problem in files if problem is None]
    test_look = _gate_test_looks(checkpoint, stored, readable, allow_new_look)
    predictions = _classify(model, stored, files, batch_size, progress, explain_dir)
    labelled = [e for e in predictions if e["correct"] is not None]
    result = {"checkpoint": str(checkpoint), "model": stored["model_name"],
              "temperature": float(stored.get("extra", {}).get("temperature", 1.0)),
              "class_names": list(stored.get("class_names", CLASSES)),
              "warnings": checkpoint_warnings(stored),
              "predictions": predictions, "n": len(predictions),
              "n_failed": sum(e["error"] is not None for e in predictions), "n_labelled": len(labelled)}
    if labelled:
        errors = sum(not e["correct"] for e in labelled)
        low, high = metrics.binomial_interval(errors, len(labelled))
        result.update(zero_one_loss=errors / len(labelled), errors=errors, ci_low=low, ci_high=high)
        result["twin_free"] = _twin_free_scores(labelled, work_dir)
    result["test_look"] = test_look
    return result


def _gate_test_looks(checkpoint, stored: dict, files: list[Path], allow_new_look: bool) -> dict | None:
    """Before any prediction: ``test_looks.gate`` for each dataset whose test images are among ``files``."""
    from muffin_lib.data.scan import scan_dataset

    look, name = None, stored["model_name"]
    for root in sorted({root for root in map(_dataset_of, files) if root is not None}):
        fingerprint = scan_dataset(root, None, progress=False).fingerprint("test")
        look = test_looks.gate("predict", {name: checkpoint}, root, data_fingerprint=fingerprint,
                               config_keys={name: stored.get("config_key")}, allow_new_look=allow_new_look)
    return look


def _write_explanations(model, images: torch.Tensor, normalization: dict, entries: list[dict],
                        folder: Path) -> None:
    """A PNG per image in ``folder``: the model's input beside its Grad-CAM overlay."""
    from PIL import Image

    from muffin_lib.files import write_atomic
    from muffin_lib.training import explain

    folder.mkdir(parents=True, exist_ok=True)
    heats, _ = explain.gradcam(model, images, normalization)
    for entry, image, heat in zip(entries, images, heats, strict=True):
        both = np.concatenate([explain.as_rgb(image), explain.overlay(image, heat)], axis=1)
        picture = Image.fromarray(both)
        source = Path(entry["path"])  # class folders often reuse file names: keep the folder in the name
        target = folder / f"{source.parent.name}_{source.stem}_gradcam.png"
        write_atomic(target, lambda temp, picture=picture: picture.save(temp, format="PNG"))
        entry["explanation"] = str(target)


def _dataset_of(path: Path) -> Path | None:
    """``DATA`` when ``path`` is ``DATA/test/<class>/file`` of a dataset that also has ``DATA/train``."""
    path = path.resolve()
    if len(path.parents) < 3 or path.parents[1].name.lower() != "test":
        return None
    root = path.parents[2]
    return root if (root / "train").is_dir() else None


def _twin_free_scores(labelled: list[dict], work_dir) -> dict | None:
    """Scores on the labelled test images of one dataset with no twin in its train split (else None)."""
    from muffin_lib.data.splits import twin_free_test_images

    roots = {_dataset_of(Path(e["path"])) for e in labelled}
    if len(roots) != 1 or None in roots:
        return None
    root = roots.pop()
    relpaths = [Path(e["path"]).resolve().relative_to(root).as_posix() for e in labelled]
    _, free = twin_free_test_images(root, work_dir, relpaths)
    kept = [e["correct"] for e, keep in zip(labelled, free, strict=True) if keep]
    return {**metrics.scores(kept), "n_with_train_twin": int((~free).sum()), "data_dir": str(root)}


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("checkpoint", type=Path, help="a checkpoint written by `train`")
    add("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders (recursive)")
    add("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: %(default)s)")
    add("--batch-size", type=int, default=64, help="images per forward pass (default: %(default)s)")
    add("--work-dir", type=Path, default=None, help="cache the near-duplicate search here (used when PATH is "
        "a dataset's test split; default: none, no cache)")
    add("--allow-new-test-look", action="store_true", help="score a dataset's test images with a checkpoint "
        "never scored on them, after an earlier look (counted: 'look N of this test split')")
    add("--explain", type=Path, default=None, metavar="OUT_DIR", help="also write each image beside its "
        "Grad-CAM overlay (what the model looked at) as PNG here (default: no overlays)")
    add("--json", action="store_true", help="print one JSON object (the last line) instead")
    parser.epilog = ("Warnings (synthetic or off-recipe checkpoint, images smaller than the model's input) "
                     "go to stderr. Exit status: 0 when at least one file was classified, 1 when none was.")


def predict_command(args: argparse.Namespace) -> int:
    result = predict_paths(args.checkpoint, args.paths, device=args.device, batch_size=args.batch_size,
                           work_dir=args.work_dir, explain_dir=args.explain,
                           allow_new_look=args.allow_new_test_look)
    for warning in [*result["warnings"], *(e["warning"] for e in result["predictions"] if e["warning"])]:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        keep = ("predictions", "class_names", "zero_one_loss", "errors", "ci_low", "ci_high", "twin_free",
                "n", "n_failed", "n_labelled", "model", "temperature", "test_look", "warnings")
        print(json.dumps({k: result[k] for k in keep if k in result}))
    else:
        _print_report(result, args.explain)
    # A run that classified nothing failed, even though each file's problem was reported on its own line.
    return 0 if result["n"] > result["n_failed"] else 1


def _print_report(result: dict, explain_dir) -> None:
    """One line per file, the count, the zero-one loss and the test split look."""
    names = result["class_names"]
    width = max(10, *(len(name) for name in names))
    if len(names) > 2:  # two classes: the other one's probability is 1 minus the shown one
        print(f"classes: {', '.join(names)} (probabilities per class in that order after each path)")
    for entry in result["predictions"]:
        if entry["error"] is not None:
            print(f"{'unreadable':{width}s} {'':6s} {entry['path']}: {entry['error']}")
            continue
        true = entry["true_label"]
        mark = "" if true is None else "  ok" if entry["correct"] else f"  WRONG (is {true})"
        shown = " ".join(f"{entry['probabilities'][name]:.3f}" for name in names)
        others = f"  [{shown}]" if len(names) > 2 else ""
        print(f"{entry['label']:{width}s} {entry['probability']:6.3f} {entry['path']}{others}{mark}")
    print(f"{result['n'] - result['n_failed']} of {plural(result['n'], 'file')} classified"
          + (f", {result['n_failed']} unreadable" if result["n_failed"] else ""))
    if explain_dir is not None:
        print(f"Grad-CAM overlays (input | what the model looked at for its answer): {explain_dir}")
    look = test_looks.look_label(result.get("test_look"))
    look = f"; {look}" if look else ""
    if "zero_one_loss" in result:
        print(f"zero-one loss {result['zero_one_loss']:.4f} ({result['errors']}/{result['n_labelled']} "
              f"labelled files wrong; 95% CI {result['ci_low']:.3f}-{result['ci_high']:.3f}{look})")
        free = result.get("twin_free")
        if free:
            print(f"twin-free part ({plural(free['n'], 'test image')} with no near-duplicate in train; "
                  f"{free['n_with_train_twin']} left out): zero-one loss {free['zero_one_loss']:.4f} "
                  f"({free['errors']}/{free['n']}; 95% CI {free['ci_low']:.3f}-{free['ci_high']:.3f}{look})")
    else:
        print(f"zero-one loss: unknown (no file sits in a folder named after a class: {'/, '.join(names)}/)")
    look = result.get("test_look")
    if look:
        print(f"test split look {'recorded' if look['new'] else 'already recorded'} in {look['record']} "
              f"({plural(look['n_looks'], 'look')} at this test split so far)")
