"""Safe, atomic unpacking of the Kaggle archive (or a downloaded folder) into DATA_DIR/train|test/...: work
happens in a hidden folder renamed into place at the end; unsafe members are refused before any is written.
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

_JUNK_DIRS = {"__macosx"}  # folders some archivers add that are never data


def _child_dir(parent: Path, name: str) -> Path | None:
    """The sub-folder of ``parent`` called ``name`` in any letter case, or None."""
    if not parent.is_dir():
        return None
    return next((entry for entry in parent.iterdir() if entry.is_dir() and entry.name.lower() == name), None)


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir())


def _class_names(split_dir: Path) -> set[str]:
    return {e.name.lower() for e in split_dir.iterdir()
            if e.is_dir() and not e.name.startswith(".") and e.name.lower() not in _JUNK_DIRS}


def is_complete(data_dir: str | os.PathLike) -> bool:
    """True when train/ holds two or more class folders, test/ the same ones, and each of them an image."""
    data_dir = Path(data_dir)
    train = _child_dir(data_dir, "train")
    classes = _class_names(train) if train is not None else set()
    split_dirs = [_child_dir(data_dir, split) for split in SPLITS]
    if len(classes) < 2 or any(d is None or _class_names(d) != classes for d in split_dirs):
        return False
    return all(_has_images(_child_dir(split_dir, name)) for split_dir in split_dirs for name in classes)


def find_layout_root(folder: str | os.PathLike, max_depth: int = 2) -> Path | None:
    """The folder holding ``train/``: ``folder`` or one up to ``max_depth`` below (repacks nest it)."""
    folder = Path(folder)
    level = [folder]
    for _ in range(max_depth + 1):
        for candidate in level:
            if _child_dir(candidate, "train") is not None:
                return candidate
        level = [child for parent in level for child in sorted(parent.iterdir()) if child.is_dir()
                 and child.name.lower() not in _JUNK_DIRS and not child.name.startswith(".")]
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
    """Rename ``source_root`` (holding train/ and test/) to ``dest_dir`` in one step; ``dest_dir`` may be
    missing, empty or a synthetic set (replaced); anything else is an error: real data is never replaced."""
    if dest_dir.exists():
        if not dest_dir.is_dir():
            raise MuffinError(f"{dest_dir} exists and is not a folder; remove it or choose another "
                              "--data-dir")
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


def _unpack(zip_path: Path, dest_dir: Path, workspace: Path) -> None:
    """Extract every member but the archivers' junk folders into ``workspace``; unsafe ones refuse the lot."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            unsafe = _unsafe_members(archive)
            if unsafe:
                listed = ", ".join(unsafe[:10]) + (" ..." if len(unsafe) > 10 else "")
                what = f"{plural(len(unsafe), 'unsafe member')} that would write outside {dest_dir}"
                raise MuffinError(f"refusing to extract {zip_path}: {what}: {listed}")
            tops = [PurePosixPath(info.filename.replace("\\", "/")).parts[:1] for info in archive.infolist()]
            members = [info for info, top in zip(archive.infolist(), tops, strict=True)
                       if top and top[0].lower() not in _JUNK_DIRS]
            archive.extractall(workspace, members=members)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
        raise MuffinError(f"{zip_path} is not a complete zip archive ({error}). The download was probably "
                          "cut off: delete the file and download it again.") from None


def safe_extract_zip(zip_path: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """Unpack the dataset archive into ``dest_dir/train|test/<class>/`` unless it is there; returns it."""
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    if is_complete(dest_dir) and not (dest_dir / SYNTHETIC_MARKER).is_file():
        log.info("%s already holds the complete dataset; nothing to extract", dest_dir)
        return dest_dir
    if not zip_path.is_file():
        raise MuffinError(f"archive {zip_path} not found; check the path given to --zip")
    workspace = _temp_beside(dest_dir, "partial")
    try:
        _unpack(zip_path, dest_dir, workspace)
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
