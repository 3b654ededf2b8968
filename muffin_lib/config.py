"""Constants and the shared layout of ``work_dir``: the only place paths and names are decided."""

from __future__ import annotations

import os
from pathlib import Path

KAGGLE_DATASET = "samuelcortinhas/muffin-vs-chihuahua-image-classification"
CLASSES: tuple[str, ...] = ("chihuahua", "muffin")  # label index = position (alphabetical, as ImageFolder)
SPLITS: tuple[str, ...] = ("train", "test")
COLOR_MODES: tuple[str, ...] = ("grayscale", "rgb")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
SYNTHETIC_MARKER = "SYNTHETIC_DATASET.json"  # in a synthetic dataset folder, so later steps can say so
# The folder that holds the package: the repository root in a checkout, site-packages in a wheel install.
PACKAGE_PARENT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = Path(os.environ.get("MUFFIN_DATA_DIR", "data/muffin-vs-chihuahua"))
DEFAULT_WORK_DIR = Path(os.environ.get("MUFFIN_WORK_DIR", "work"))


def user_cache_dir() -> Path:
    """The user's own muffin-lab folder, shared by every work_dir (bf16 probe verdicts, test looks)."""
    if os.environ.get("MUFFIN_CACHE_DIR"):
        return Path(os.environ["MUFFIN_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "muffin-lab"


def channels_for(color_mode: str) -> int:
    if color_mode not in COLOR_MODES:
        raise ValueError(f"color_mode must be one of {COLOR_MODES}, got {color_mode!r}")
    return 1 if color_mode == "grayscale" else 3


class WorkDir:
    """Where each step keeps its files inside ``work_dir``; notebooks share state only through these."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    def _dir(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    splits_file = property(lambda self: self._dir() / "splits.json")
    trials_db = property(lambda self: self._dir() / "trials.sqlite")
    cache_dir = property(lambda self: self._dir("cache"))
    checkpoints_dir = property(lambda self: self._dir("checkpoints"))
    results_dir = property(lambda self: self._dir("results"))
    figures_dir = property(lambda self: self._dir("figures"))
    executed_dir = property(lambda self: self._dir("executed"))

    def __repr__(self) -> str:
        return f"WorkDir({str(self.root)!r})"
