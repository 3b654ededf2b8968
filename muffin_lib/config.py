"""Constants and the shared layout of ``work_dir``: the only place paths and names are decided."""

from __future__ import annotations

import os
from pathlib import Path

KAGGLE_DATASET = "samuelcortinhas/muffin-vs-chihuahua-image-classification"
# Label index = position in this tuple (alphabetical, as torchvision's ImageFolder would order them).
CLASSES: tuple[str, ...] = ("chihuahua", "muffin")
SPLITS: tuple[str, ...] = ("train", "test")
COLOR_MODES: tuple[str, ...] = ("grayscale", "rgb")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
# Written into a dataset folder made by the synthetic generator, so later steps can say so.
SYNTHETIC_MARKER = "SYNTHETIC_DATASET.json"

# The folder that holds the muffin_lib package: the repository root in a checkout (notebooks/ and colab/
# beside it), site-packages in a wheel install.
PACKAGE_PARENT = Path(__file__).resolve().parents[1]

DEFAULT_DATA_DIR = Path(os.environ.get("MUFFIN_DATA_DIR", "data/muffin-vs-chihuahua"))
DEFAULT_WORK_DIR = Path(os.environ.get("MUFFIN_WORK_DIR", "work"))


def user_cache_dir() -> Path:
    """The user's own muffin-lab folder, beside every work_dir (``MUFFIN_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/muffin-lab`` or ``~/.cache/muffin-lab``): the bf16 probe's verdicts, the test-look record."""
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

    @property
    def splits_file(self) -> Path:
        return self._dir() / "splits.json"

    @property
    def cache_dir(self) -> Path:
        return self._dir("cache")

    @property
    def checkpoints_dir(self) -> Path:
        return self._dir("checkpoints")

    @property
    def trials_db(self) -> Path:
        return self._dir() / "trials.sqlite"

    @property
    def results_dir(self) -> Path:
        return self._dir("results")

    @property
    def figures_dir(self) -> Path:
        return self._dir("figures")

    @property
    def executed_dir(self) -> Path:
        return self._dir("executed")

    def __repr__(self) -> str:
        return f"WorkDir({str(self.root)!r})"
