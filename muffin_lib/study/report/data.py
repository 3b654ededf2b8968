"""Notebooks 00-02: the machine, the data, the twins, preprocessing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from muffin_lib.config import CLASSES
from muffin_lib.text import plural

__all__ = ["augment_finding", "cache_table", "color_finding", "color_statistics", "data_finding",
           "environment_note", "environment_summary", "exploration_results", "preprocessing_results",
           "resize_finding", "setup_results", "size_frame", "split_table", "twin_pairs_to_show",
           "twins_finding"]


def environment_summary(environment: dict) -> str:
    """One line for the summary: device, GPU or cores, RAM, torch."""
    e, hardware = environment, environment["gpu_name"] or f"{environment['cpu_count']} CPU cores"
    return f"{e['device']} ({hardware}), {e['ram_gb']} GB RAM, torch {e['torch']}"


def environment_note(environment: dict) -> str:
    """What notebook 00 tells the reader about the machine, with advice when there is no GPU."""
    e, advice = environment, ""
    if e["gpu_name"]:
        memory = f" ({e['gpu_memory_gb']} GB)" if e["gpu_memory_gb"] else ""
        hardware = f"the GPU **{e['gpu_name']}**{memory}"
    else:
        hardware = f"the CPU ({e['cpu_count']} cores, {e['torch_threads']} PyTorch threads)"
        advice = ("\n\nThere is no GPU: the `full` profile is slow on a CPU. In Colab choose *Runtime → "
                  'Change runtime type → GPU*; here, try `profile="smoke"` or a smaller `image_size`.')
    return (f"Training will run on **{e['device']}**, using {hardware}, with {e['ram_gb']} GB of RAM and "
            f"PyTorch {e['torch']}. CPU allocator: {e['cpu_allocator']}.{advice}")


_ORIGINS = {"existing": "already in place", "kaggle": "downloaded from Kaggle", "zip": "extracted from a zip",
            "synthetic": "generated because Kaggle was not reachable or not asked for"}


def data_finding(scanned, source_used: str, synthetic: bool, data_dir) -> str:
    """How many images, real or synthetic, where they came from, how many were rejected."""
    kind = "SYNTHETIC images (drawn shapes, not photos)" if synthetic else "real photos"
    return (f"{len(scanned.records_for('train')):,} training and {len(scanned.records_for('test')):,} test "
            f"images, {kind}, {_ORIGINS[source_used]} (`{data_dir}`); "
            f"{plural(len(scanned.rejected), 'file')} rejected as unreadable.")


def setup_results(environment: dict, fetched, scanned, credentials, synthetic: bool,
                  findings: list[str]) -> dict:
    return {"environment": {**environment, "summary": environment_summary(environment)},
            "source_used": fetched.source_used, "synthetic": synthetic, "data_dir": fetched.data_dir,
            "images": {split: len(scanned.records_for(split)) for split in ("train", "test")},
            "rejected": len(scanned.rejected), "kaggle_credentials": credentials, "findings": findings}


def size_frame(records):
    """One row per image: split, class, width, height, mode, aspect ratio and shorter side."""
    import pandas as pd

    sizes = pd.DataFrame([{"split": r.split, "class": r.class_name, "width": r.width, "height": r.height,
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
    for label, name in enumerate(cache.class_names):
        pixels = cache.images[cache.labels == label].to(device, torch.float32)
        rows[name] = {
            **{f"mean {c}": float(pixels[:, i].mean()) for i, c in enumerate(channels)},
            **{f"std {c}": float(pixels[:, i].std()) for i, c in enumerate(channels)},
            "brightness": float(pixels.mean()),
        }
    return pd.DataFrame(rows).T.round(1)


def color_finding(color_stats) -> str:
    means = [c for c in color_stats.columns if c.startswith("mean ")]
    if sorted(color_stats.index) != sorted(CLASSES):  # another dataset: brightest and darkest class
        bright = color_stats["brightness"]
        spread = color_stats[means].max() - color_stats[means].min()
        widest = spread.idxmax()
        return (
            f"{bright.idxmax()} images are the brightest on average ({bright.max():.1f} grey levels), "
            f"{bright.idxmin()} the darkest ({bright.min():.1f}); the channel mean that differs most between "
            f"classes is {widest.removeprefix('mean ')} (a spread of {spread[widest]:.1f})."
        )
    difference = color_stats.loc["muffin"] - color_stats.loc["chihuahua"]
    biggest = difference[means].abs().idxmax()
    return (
        f"Muffin images are on average {abs(difference['brightness']):.1f} grey levels "
        f"{'brighter' if difference['brightness'] > 0 else 'darker'} than Chihuahua images; the largest "
        f"class difference in a channel mean is {biggest.removeprefix('mean ')} ({difference[biggest]:+.1f})."
    )


def exploration_results(audit: dict, majority: str, baseline: float, color_stats, findings: list[str],
                        synthetic: bool) -> dict:
    """The results file of notebook 01 (the near-duplicate groups themselves stay in the audit cache)."""
    near, kept = audit["near_duplicates"], ("groups", "test_with_train_twin_paths")
    return {"synthetic": synthetic, "counts": audit["splits"], "majority_class": majority,
            "majority_baseline_test_zero_one_loss": baseline, "sizes": audit["sizes"],
            "color_stats": color_stats.to_dict(orient="index"), "rejected": audit["rejected"],
            "duplicates": {k: v for k, v in audit["duplicates"].items() if k != "groups"},
            "near_duplicates": {k: v for k, v in near.items() if k not in kept}, "findings": findings}


def twins_finding(near: dict, n_train: int, n_test: int) -> str:
    """The near-duplicate sentence of notebook 01 from ``audit_dataset(...)["near_duplicates"]``."""
    within = near.get("n_groups_within_train", 0)
    conflicts = len(near["conflicting_labels"])
    return (
        f"{plural(near['n_groups'], 'group')} of near-duplicate photos (twins: the same picture re-encoded, "
        f"resized or trimmed) hold {plural(near['n_images_in_groups'], 'image')}; "
        f"{near['test_with_train_twin']} of the {n_test:,} test images "
        f"({near['test_with_train_twin'] / max(n_test, 1):.1%}) have a twin among the {n_train:,} training "
        f"images, and {plural(within, 'group')} {'lies' if within == 1 else 'lie'} inside the training "
        "split. Every split and fold keeps a group on one side, and test scores are reported on the "
        "twin-free part of the test split"
        + (f"; {plural(conflicts, 'group')} {'carries' if conflicts == 1 else 'carry'} conflicting labels."
           if conflicts else "; no group carries two labels.")
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
    classes = list(enumerate(getattr(plan, "class_names", CLASSES)))
    rows = [{"part": name, "images": len(idx), **{f"{c} share": float(np.mean(labels[idx] == i))
                                                   for i, c in classes}} for name, idx in parts.items()]
    return pd.DataFrame(rows).round(3)


def resize_finding(original_sizes: Sequence[tuple[int, int]], image_size: int, color_mode: str) -> str:
    """How much of a photo the centre crop keeps and how many of its pixels a model sees."""
    kept = np.mean([min(w, h) ** 2 / (w * h) for w, h in original_sizes])
    pixels = np.mean([image_size**2 / (w * h) for w, h in original_sizes])
    channels = " in one grey channel instead of three." if color_mode == "grayscale" else " (in colour)."
    return (f"The centre crop keeps {kept:.0%} of a shown photo's area on average, and at {image_size} px a "
            f"model sees {pixels:.1%} of the original pixel count{channels}")


def augment_finding(name: str, preset: dict) -> str:
    return f"Augmentation preset '{name}': " + ", ".join(f"{k}={v}" for k, v in preset.items()) + "."


def preprocessing_results(train, test, holdout, plan, augment: str, preset: dict, findings: list[str],
                          synthetic: bool) -> dict:
    return {"synthetic": synthetic, "images": {"train": len(train.labels), "test": len(test.labels)},
            "fit": len(holdout.train_idx), "validation": len(holdout.val_idx),
            "folds": [len(t) for _, t in plan.folds], "twin_groups_in_train": len(plan.twin_groups()),
            "cache_files": [train.path, test.path], "augment": {"preset": augment, **preset},
            "findings": findings}
