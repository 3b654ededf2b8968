"""The classes of a dataset: the sub-folders of ``train/``, lower-cased and sorted as torchvision's
ImageFolder orders them (label i = the i-th name: chihuahua=0, muffin=1), checked against ``test/``.
"""

from __future__ import annotations

import os
from pathlib import Path

from muffin_lib.config import SPLITS
from muffin_lib.errors import MuffinError


def visible_entries(folder: Path) -> list[os.DirEntry]:
    """The entries of ``folder`` sorted by name, without hidden files and archivers' junk."""
    hidden = ("__macosx", "thumbs.db", "desktop.ini")
    with os.scandir(folder) as entries:
        visible = (e for e in entries if not (e.name.startswith(".") or e.name.lower() in hidden))
        return sorted(visible, key=lambda e: e.name)


def _class_folders(split_dir: Path) -> dict[str, str]:
    """{lower-cased class name: folder name} of the sub-folders of one split folder."""
    found: dict[str, str] = {}
    for entry in [e for e in visible_entries(split_dir) if e.is_dir()]:
        name = entry.name.lower()
        if name in found:
            raise MuffinError(
                f"{split_dir} has two class folders that differ only in case ({found[name]}/ and "
                f"{entry.name}/); class names are matched case-insensitively. Merge them into one folder."
            )
        found[name] = entry.name
    return found


def find_classes(data_dir: str | os.PathLike) -> tuple[str, ...]:
    """The sorted class names; MuffinError for fewer than two or when ``test/`` holds other ones."""
    data_dir = Path(data_dir)
    split_dirs = {e.name.lower(): Path(e.path) for e in visible_entries(data_dir)
                  if e.is_dir() and e.name.lower() in SPLITS}
    train = sorted(_class_folders(split_dirs["train"])) if "train" in split_dirs else []
    if len(train) < 2:
        held = f"only {train[0]}/" if train else "no class folders"
        raise MuffinError(
            f"{split_dirs.get('train', data_dir / 'train')} holds {held}: a classifier needs two or more "
            "classes, one sub-folder of images per class (e.g. train/muffin/ and train/chihuahua/). Add a "
            "folder for each class, in train/ and in test/."
        )
    if "test" in split_dirs:
        test = sorted(_class_folders(split_dirs["test"]))
        missing, extra = [c for c in train if c not in test], [c for c in test if c not in train]
        if missing or extra:
            what = "; ".join(part for part in (
                f"missing from test/: {', '.join(c + '/' for c in missing)}" if missing else "",
                f"in test/ but not in train/: {', '.join(c + '/' for c in extra)}" if extra else "") if part)
            raise MuffinError(
                f"{data_dir}: test/ and train/ must hold the same class folders ({what}). Add the missing "
                "folder(s) with images, or remove (or rename) the extra ones so both splits have the same "
                "classes."
            )
    return tuple(train)
