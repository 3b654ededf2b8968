"""Every figure of the study: each function takes data and returns a matplotlib Figure."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from muffin_lib.config import CLASSES, WorkDir
from muffin_lib.data.imageio import load_image, preprocess_image

CLASS_COLORS = {"chihuahua": "tab:brown", "muffin": "tab:orange"}


def save_figure(fig: Figure, work_dir: str | Path, name: str, dpi: int = 110) -> Path:
    """Save ``fig`` as ``work_dir/figures/<name>.png`` and return the path."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "figure"
    path = WorkDir(work_dir).figures_dir / f"{safe}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def _to_display_array(image) -> np.ndarray:
    """H x W (grey) or H x W x 3 uint8 from a PIL image, a C x H x W tensor/array or an H x W x C array."""
    if isinstance(image, Image.Image):
        if max(image.size) > 512:  # a 4,600 px original would be slow to draw in a 2-inch cell
            image = image.copy()
            image.thumbnail((512, 512))
        array = np.asarray(image)
    else:
        array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
            array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0
        array = np.clip(array * scale, 0, 255).astype(np.uint8)
    return array


def _message_figure(text: str) -> Figure:
    """A small figure that only says ``text``: what a grid shows when it has nothing to show."""
    fig, ax = plt.subplots(figsize=(5, 1))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return fig


def _finish(fig: Figure, title: str | None = None) -> Figure:
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def image_grid(images: Sequence, titles: Sequence[str] | None = None, *, ncols: int = 8,
               title: str | None = None, title_colors: Sequence[str] | None = None,
               cell_inches: float = 1.7) -> Figure:
    """Images in a grid, each with its title (e.g. class, size, prediction)."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    size = (cell_inches * ncols, cell_inches * nrows + (0.4 if title else 0))
    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        array = _to_display_array(images[i])
        ax.imshow(array, cmap="gray" if array.ndim == 2 else None, vmin=0, vmax=255)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8, color=title_colors[i] if title_colors else "black")
    return _finish(fig, title)


def learning_curves(history, *, title: str | None = None) -> Figure:
    """Per-epoch cross-entropy (left) and zero-one loss (right, 1 - ``*_accuracy``) of ``loop.fit``."""
    frame = pd.DataFrame(history).dropna(axis=1, how="all")
    for column in [c for c in frame.columns if c.endswith("_accuracy")]:
        zero_one = column.removesuffix("_accuracy") + "_zero_one_loss"
        if zero_one not in frame:
            frame[zero_one] = 1.0 - frame[column]
    x = frame["epoch"] if "epoch" in frame else pd.Series(range(1, len(frame) + 1))
    loss_columns = [c for c in frame.columns if c.endswith("loss") and "zero_one" not in c]
    error_columns = [c for c in frame.columns if c.endswith("error") or "zero_one" in c]
    panels = [(cols, label) for cols, label in ((loss_columns, "cross-entropy loss"),
                                                (error_columns, "zero-one loss")) if cols]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 3.6), squeeze=False)
    for ax, (columns, label) in zip(axes.flat, panels, strict=False):
        for column in columns:
            ax.plot(x, frame[column], marker="o", markersize=3, label=column.replace("_", " "))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        # one or two epochs would otherwise get a 0.01-wide axis
        ax.set(xlabel="epoch", ylabel=label, xlim=(x.min() - 0.5, x.max() + 0.5))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _finish(fig, title)


def confusion_matrix(matrix, *, class_names: Sequence[str] | None = None, title: str | None = None) -> Figure:
    """Counts with row percentages; rows are the true class, columns the predicted one."""
    counts = np.asarray(matrix, dtype=np.int64)
    k = counts.shape[0]
    if class_names is None:
        class_names = CLASSES if k == len(CLASSES) else [f"class {i}" for i in range(k)]
    row_share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    grow = max(0, k - 2)
    fig, ax = plt.subplots(figsize=(4.2 + 1.1 * grow, 3.6 + 1.0 * grow))
    ax.imshow(row_share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, f"{count}\n{row_share[i, j]:.0%}", ha="center", va="center",
                color="white" if row_share[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), class_names, rotation=30 if k > 3 else 0)
    ax.set_yticks(range(k), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    return _finish(fig)


def size_histograms(sizes: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Width, height and aspect ratio (width / height) per class; ``sizes`` has width, height, class."""
    frame = sizes.assign(aspect=sizes["width"] / sizes["height"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    labels = ("width (px)", "height (px)", "aspect (w/h)")
    for ax, column, label in zip(axes, ("width", "height", "aspect"), labels, strict=True):
        values = frame[column]
        bins = np.linspace(values.min(), values.max(), 40) if values.max() > values.min() else 10
        for class_name, group in frame.groupby("class"):
            ax.hist(group[column], bins=bins, alpha=0.6, label=str(class_name),
                    color=CLASS_COLORS.get(str(class_name)))
        ax.set(xlabel=label, ylabel="images")
        ax.legend(fontsize=8)
    return _finish(fig, title)


def channel_histograms(pixels_by_class: dict[str, np.ndarray], *, title: str | None = None) -> Figure:
    """Intensity histograms per class and channel; values are uint8 arrays N x C x H x W (C = 1 or 3)."""
    any_pixels = next(iter(pixels_by_class.values()))
    channels = ("grey",) if any_pixels.shape[1] == 1 else ("red", "green", "blue")
    fig, axes = plt.subplots(1, len(channels), figsize=(4.3 * len(channels), 3.2), squeeze=False)
    for c, (ax, channel) in enumerate(zip(axes.flat, channels, strict=True)):
        for class_name, pixels in pixels_by_class.items():
            values = np.asarray(pixels)[:, c].ravel()
            counts, edges = np.histogram(values, bins=64, range=(0, 256), density=True)
            ax.plot(edges[:-1], counts, label=class_name, color=CLASS_COLORS.get(class_name))
        ax.set(title=channel, xlabel="intensity")
        ax.legend(fontsize=8)
    return _finish(fig, title)


def heatmap(table: pd.DataFrame, *, title: str | None = None, fmt: str = ".3f", cmap: str = "viridis_r",
            colorbar_label: str = "CV zero-one risk") -> Figure:
    """A 2-D table (rows x columns of one hyper-parameter pair) with its values written in the cells."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(1.3 * table.shape[1] + 2.5, 0.6 * table.shape[0] + 1.8))
    sns.heatmap(table, annot=True, fmt=fmt, cmap=cmap, ax=ax, cbar_kws={"label": colorbar_label})
    ax.set_title(title or "")
    return _finish(fig)


def hyperparameter_effects(table: pd.DataFrame, params: Sequence[str], *, value: str = "mean",
                           low: str = "ci_low", high: str = "ci_high", title: str | None = None) -> Figure:
    """Each hyper-parameter's marginal effect: the mean ``value`` and interval at each of its values."""
    fig, axes = plt.subplots(1, len(params), figsize=(4.2 * len(params), 3.3), squeeze=False)
    for ax, param in zip(axes.flat, params, strict=True):
        grouped = table.groupby(param)[[value, low, high]].mean().sort_index()
        positions = np.arange(len(grouped))
        yerr = [grouped[value] - grouped[low], grouped[high] - grouped[value]]
        ax.errorbar(positions, grouped[value], yerr=yerr, marker="o", capsize=4)
        ax.set_xticks(positions, [f"{v:g}" if isinstance(v, float) else str(v) for v in grouped.index])
        ax.set(xlabel=param, ylabel=f"CV risk ({value})")
        ax.grid(alpha=0.3)
    return _finish(fig, title)


def risk_bars(frame: pd.DataFrame, *, title: str | None = None, ylabel: str = "zero-one risk") -> Figure:
    """Risk bars with intervals, a group per row (model), a bar per column X with X_low and X_high."""
    kinds = [c for c in frame.columns if f"{c}_low" in frame.columns and f"{c}_high" in frame.columns]
    if not kinds:
        raise ValueError(f"risk_bars needs columns X, X_low and X_high; got {list(frame.columns)}")
    width = 0.8 / max(1, len(kinds))
    positions = np.arange(len(frame))
    fig, ax = plt.subplots(figsize=(1.6 * len(frame) + 3, 3.8))
    for k, kind in enumerate(kinds):
        values = frame[kind].astype(float)
        errors = [values - frame[f"{kind}_low"].astype(float), frame[f"{kind}_high"].astype(float) - values]
        bars = ax.bar(positions + (k - (len(kinds) - 1) / 2) * width, values, width,
                      yerr=np.nan_to_num(errors), capsize=4, label=kind)
        labels = [f"{v:.3f}" if np.isfinite(v) else "" for v in values]
        ax.bar_label(bars, labels=labels, padding=2, fontsize=8)
    ax.set_xticks(positions, list(frame.index))
    highest = float(np.nanmax(frame[[f"{k}_high" for k in kinds]].to_numpy(dtype=float)))
    # a t interval can pass 1; a risk cannot
    ax.set(ylabel=ylabel, ylim=(0, min(1.05, max(0.05, highest * 1.2))), title=title or "")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _finish(fig)


def augmentation_preview(originals, augmented: Sequence, *, class_names: Sequence[str] | None = None
                         ) -> Figure:
    """First column: the original images; then one column per augmented draw of the same batch."""
    columns, images, titles = [originals, *augmented], [], []
    for r in range(len(originals)):
        for c, batch in enumerate(columns):
            images.append(batch[r])
            label = "original" if c == 0 else f"draw {c}"
            titles.append(f"{class_names[r]}: {label}" if class_names and c == 0 else label)
    return image_grid(images, titles, ncols=len(columns), title="augmentation: the same images, random draws")


def errors_grid(data_dir, errors: Sequence[dict], *, class_names: Sequence[str] = CLASSES,
                title: str | None = None, ncols: int = 6) -> Figure:
    """The photos of ``errors`` (``report.most_confident_errors``), titled "true -> predicted (p)"."""
    if not errors:
        return _message_figure("no misclassified images")
    images = [load_image(Path(data_dir) / e["relpath"]) for e in errors]
    titles = [f"{class_names[e['label']]} -> {class_names[e['predicted']]} ({e['confidence']:.2f})"
              for e in errors]
    return image_grid(images, titles, ncols=ncols, title=title, title_colors=["tab:red"] * len(images))


def twin_gallery(data_dir, pairs: Sequence[tuple[str, str]], *, title: str | None = None,
                 ncols: int = 4) -> Figure:
    """Twin pairs side by side (two columns per pair), each titled with its relative path."""
    images, titles = [], []
    for first, second in pairs:
        for path in (first, second):
            images.append(load_image(Path(data_dir) / path))
            titles.append(path.replace("/", "/\n", 1))
    if not images:
        return _message_figure("no near-duplicate pairs")
    return image_grid(images, titles, ncols=2 * ncols, title=title, cell_inches=1.9)


def test_scores(table: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Twin-free and whole-split test zero-one loss per candidate, with intervals (``FinalTest.table``)."""
    names, x = list(table.index), np.arange(len(table))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(names) + 2), 3.8))
    parts = ((-0.18, "twin_free", "twin-free test images"), (0.18, "all", "whole test split"))
    for offset, part, label in parts:
        values = table[part].to_numpy(dtype=float)
        errors = np.vstack([values - table[f"{part}_low"], table[f"{part}_high"] - values])
        ax.bar(x + offset, values, width=0.36, label=label, yerr=errors, capsize=3,
               alpha=1.0 if part == "twin_free" else 0.5)
    ax.set_xticks(x, names, rotation=15, ha="right")
    top = min(1.0, float(table[["twin_free_high", "all_high"]].max().max()) * 1.15 + 0.01)
    ax.set(ylabel="zero-one loss (95% Wilson interval)", ylim=(0, top), title=title or "test zero-one loss")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig)


def what_models_see(records, n_per_class: int, image_size: int, color_mode: str, seed: int = 0) -> Figure:
    """``n_per_class`` random training images per class after ``preprocess_image``, with class and size."""
    rng, picked = random.Random(seed), []
    for label in sorted({r.label for r in records}):
        of_class = [r for r in records if r.label == label]
        picked += rng.sample(of_class, min(n_per_class, len(of_class)))
    images = [preprocess_image(r.path, image_size, color_mode) for r in picked]
    titles = [f"{r.class_name} ({r.width}x{r.height})" for r in picked]
    title = f"{image_size} px, {color_mode}: what the models see"
    return image_grid(images, titles, ncols=n_per_class, title=title)


def resizing_preview(cache, indices: Sequence[int], image_size: int) -> Figure:
    """Each row: the original photo of ``cache`` image ``i``, then what a model gets in colour and in grey."""
    from muffin_lib.data.datasets import open_original

    images, titles = [], []
    for i in indices:
        original = open_original(cache, i)
        images += [original, *(preprocess_image(original, image_size, mode) for mode in ("rgb", "grayscale"))]
        titles += [f"{cache.class_names[int(cache.labels[i])]} {original.width}x{original.height}",
                   f"{image_size} px rgb", f"{image_size} px grey"]
    return image_grid(images, titles, ncols=6, title="original, then what the models see")


def gradcam_grid(examples: Sequence[dict], *, title: str | None = None, ncols: int = 6) -> Figure:
    """Grad-CAM overlays (``explain.validation_examples``) with their captions; errors in red."""
    from muffin_lib.training.explain import overlay

    if not examples:
        return _message_figure("no validation images to explain")
    nrows = -(-len(examples) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.5 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, example in zip(axes.flat, examples, strict=False):
        ax.imshow(overlay(example["image"], example["heat"]))
        ax.set_title(example["caption"], fontsize=8, color="crimson" if example["wrong"] else "black")
    return _finish(fig, title)


def reliability_diagram(calibration: dict, *, title: str | None = None) -> Figure:
    """Accuracy against confidence per bin, before and after temperature scaling."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot([0.5, 1], [0.5, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    scaled = f"temperature {calibration['temperature']:.2f}"
    for key, label, marker in (("before", "raw", "o"), ("after", scaled, "s")):
        bins = [b for b in calibration[key]["bins"] if b["high"] > 0.5]
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker=marker,
                label=f"{label} (ECE {calibration[key]['ece']:.3f})")
    ax.set(xlabel="confidence (probability of the predicted class)", ylabel="accuracy", xlim=(0.5, 1.0),
           ylim=(0.0, 1.02))
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _finish(fig)
