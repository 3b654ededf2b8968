"""Safe, atomic unpacking of the Kaggle archive (or a downloaded folder) into DATA_DIR/train|test/...

Nothing is written into ``dest_dir`` until everything is unpacked: work happens in a hidden folder
beside it, which is renamed into place at the end, so an interrupted or failed run leaves nothing
half-extracted. Members with absolute paths, ``..`` or symlinks are refused before anything is written.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from muffin_lib.config import CLASSES, IMAGE_EXTENSIONS, SPLITS, SYNTHETIC_MARKER
from muffin_lib.errors import MuffinError
from muffin_lib.text import plural

log = logging.getLogger(__name__)

# Folders some archivers add that are never data.
_JUNK_DIRS = {"__macosx"}


def _child_dir(parent: Path, name: str) -> Path | None:
    """The sub-folder of ``parent`` called ``name`` in any letter case, or None."""
    if not parent.is_dir():
        return None
    for entry in parent.iterdir():
        if entry.is_dir() and entry.name.lower() == name:
            return entry
    return None


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir())


def _class_names(split_dir: Path) -> set[str]:
    return {e.name.lower() for e in split_dir.iterdir()
            if e.is_dir() and not e.name.startswith(".") and e.name.lower() not in _JUNK_DIRS}


def is_complete(data_dir: str | os.PathLike) -> bool:
    """True when train/ holds two or more class folders (muffin and chihuahua for the Kaggle data), test/ the
    same ones, and every one of them at least one image (any letter case)."""
    data_dir = Path(data_dir)
    train = _child_dir(data_dir, "train")
    classes = _class_names(train) if train is not None else set()
    if len(classes) < 2:
        return False
    for split in SPLITS:
        split_dir = _child_dir(data_dir, split)
        if split_dir is None or _class_names(split_dir) != classes:
            return False
        for name in classes:
            class_dir = _child_dir(split_dir, name)
            if class_dir is None or not _has_images(class_dir):
                return False
    return True


def find_layout_root(folder: str | os.PathLike, max_depth: int = 2) -> Path | None:
    """The folder holding ``train/`` in ``folder`` or up to ``max_depth`` levels below it, or None.

    Kaggle's archive has ``train/`` at the top, but repacked copies often nest it one folder deep.
    """
    folder = Path(folder)
    level = [folder]
    for _ in range(max_depth + 1):
        for candidate in level:
            if _child_dir(candidate, "train") is not None:
                return candidate
        level = [
            child
            for parent in level
            for child in sorted(parent.iterdir())
            if child.is_dir() and child.name.lower() not in _JUNK_DIRS and not child.name.startswith(".")
        ]
    return None


def _unsafe_members(archive: zipfile.ZipFile) -> list[str]:
    """Names that would escape the destination (absolute, drive letter, ``..``) or are symlinks."""
    bad = []
    for info in archive.infolist():
        name = info.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        is_symlink = stat.S_ISLNK(info.external_attr >> 16)
        if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in parts or is_symlink:
            reason = "symlink" if is_symlink else "absolute path" if ".." not in parts else "'..' in path"
            bad.append(f"{info.filename} ({reason})")
    return bad


def _temp_beside(dest_dir: Path, what: str) -> Path:
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.{what}-", dir=dest_dir.parent))


def install_layout(source_root: Path, dest_dir: Path, *, replace_synthetic: bool = True) -> None:
    """Rename the folder ``source_root`` (holding train/ and test/) to ``dest_dir`` in one step.

    ``dest_dir`` may be missing or empty; a synthetic set there (it carries the marker) is replaced.
    Anything else in the way is an error: real data is never overwritten.
    """
    if dest_dir.exists():
        if not dest_dir.is_dir():
            raise MuffinError(f"{dest_dir} exists and is not a folder; remove it or choose another --data-dir")
        synthetic = (dest_dir / SYNTHETIC_MARKER).is_file()
        if any(dest_dir.iterdir()) and not (synthetic and replace_synthetic):
            raise MuffinError(
                f"{dest_dir} already holds files but not a complete dataset (train/ and test/ with "
                f"{' and '.join(CLASSES)} images). Move or delete it, or choose another --data-dir."
            )
        trash = _temp_beside(dest_dir, "old")
        os.replace(dest_dir, trash / dest_dir.name)
        os.replace(source_root, dest_dir)
        shutil.rmtree(trash, ignore_errors=True)
        if synthetic:
            log.info("replaced the synthetic dataset in %s", dest_dir)
    else:
        os.replace(source_root, dest_dir)


def safe_extract_zip(zip_path: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """Unpack the dataset archive so that ``dest_dir/train|test/<class>/...`` results; returns dest_dir.

    A no-op when ``dest_dir`` already holds a complete dataset. Refuses unsafe members by name; a
    corrupt or truncated archive raises MuffinError and leaves nothing behind.
    """
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    if is_complete(dest_dir) and not (dest_dir / SYNTHETIC_MARKER).is_file():
        log.info("%s already holds the complete dataset; nothing to extract", dest_dir)
        return dest_dir
    if not zip_path.is_file():
        raise MuffinError(f"archive {zip_path} not found; check the path given to --zip")
    workspace = _temp_beside(dest_dir, "partial")
    try:
        try:
            with zipfile.ZipFile(zip_path) as archive:
                unsafe = _unsafe_members(archive)
                if unsafe:
                    raise MuffinError(
                        f"refusing to extract {zip_path}: {plural(len(unsafe), 'unsafe member')} that would write "
                        f"outside {dest_dir}: " + ", ".join(unsafe[:10]) + (" ..." if len(unsafe) > 10 else "")
                    )
                members = [
                    info
                    for info in archive.infolist()
                    if PurePosixPath(info.filename.replace("\\", "/")).parts[:1]
                    and PurePosixPath(info.filename.replace("\\", "/")).parts[0].lower() not in _JUNK_DIRS
                ]
                archive.extractall(workspace, members=members)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
            raise MuffinError(
                f"{zip_path} is not a complete zip archive ({error}). The download was probably cut off: "
                "delete the file and download it again."
            ) from None
        root = find_layout_root(workspace)
        if root is None:
            raise MuffinError(
                f"{zip_path} holds no train/ folder (expected train/ and test/ with {' and '.join(CLASSES)} "
                "sub-folders, as in the Kaggle muffin-vs-chihuahua archive)."
            )
        install_layout(root, dest_dir)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    log.info("extracted %s into %s", zip_path.name, dest_dir)
    return dest_dir


def copy_layout(source_dir: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """Copy a downloaded dataset folder (e.g. from kagglehub) into ``dest_dir`` in the same atomic way."""
    source_dir, dest_dir = Path(source_dir), Path(dest_dir)
    if is_complete(dest_dir) and not (dest_dir / SYNTHETIC_MARKER).is_file():
        return dest_dir
    root = find_layout_root(source_dir)
    if root is None:
        zips = sorted(source_dir.rglob("*.zip"))
        if zips:
            return safe_extract_zip(zips[0], dest_dir)
        raise MuffinError(f"the download in {source_dir} holds no train/ folder; the dataset layout changed?")
    workspace = _temp_beside(dest_dir, "partial")
    try:
        staged = workspace / "data"
        staged.mkdir()
        for split in SPLITS:
            split_dir = _child_dir(root, split)
            if split_dir is not None:
                shutil.copytree(split_dir, staged / split_dir.name, symlinks=False)
        install_layout(staged, dest_dir)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    return dest_dir
