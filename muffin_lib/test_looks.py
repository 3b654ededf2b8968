"""The record of every look at a dataset's test split: ``work_dir/test_looks.json`` (``WorkDir.test_looks_file``).

The test split is scored once, after every choice (notebook 09, ``selection.evaluation.evaluate_candidates``).
Every evaluation of it is recorded here: when (UTC), who looked (``09_final_test``, ``evaluate_on_split``,
``predict``), the candidate set (name -> checkpoint path, sha256 of the file, config key; an ensemble: its
members' identities and one sha256 over them, so it is the same candidate exactly when its members are), the test split
(content fingerprint and data_dir) and the code version (``git rev-parse --short HEAD``, else the package
version). Scoring the same candidate set again (an interrupted notebook 09 re-run) is not a new look: the
look's ``repeats`` grows instead. ``check_candidates`` refuses a look with another candidate set on a split
already scored, unless it is forced. Shared top level: imports no layer; callers pass the fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from muffin_lib.config import PACKAGE_PARENT, WorkDir
from muffin_lib.errors import MuffinError
from muffin_lib.files import jsonable, write_text_atomic

WHO = ("09_final_test", "evaluate_on_split", "predict")
FORCE = ("set the notebook 09 parameter allow_new_test_look = True (runner: python -m muffin_lib run "
         "-p allow_new_test_look True), or pass allow_new_look=True to evaluate_candidates")
RECORD_VERSION = 1


def code_version() -> str:
    """``git rev-parse --short HEAD`` of the checkout muffin_lib runs from, else the package version."""
    from muffin_lib import __version__

    if (PACKAGE_PARENT / ".git").exists():
        try:
            out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PACKAGE_PARENT, capture_output=True,
                                 text=True, timeout=10, check=False)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return f"muffin-lab {__version__}"


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def identify(candidates: dict[str, object], config_keys: dict[str, str] | None = None) -> dict[str, dict]:
    """name -> {checkpoint, sha256, config_key}: what a candidate set is, whatever its files are called. A candidate
    given as a dict (member name -> checkpoint: an ensemble of those checkpoints) is identified by its members:
    ``members`` holds their identities and ``sha256`` is the sha256 of their sorted (name, sha256) pairs (None
    when a member file is missing, as for a missing checkpoint)."""
    keys = config_keys or {}
    found = {}
    for name, checkpoint in sorted(candidates.items()):
        if isinstance(checkpoint, dict):
            members = identify(checkpoint, keys)
            pairs = _signature(members)
            digest = (None if any(sha is None for _, sha in pairs)
                      else hashlib.sha256(json.dumps(pairs).encode()).hexdigest())
            found[str(name)] = {"checkpoint": None, "sha256": digest, "config_key": None, "members": members}
            continue
        path = Path(checkpoint)
        found[str(name)] = {"checkpoint": str(path.resolve()), "sha256": file_sha256(path) if path.is_file() else None,
                            "config_key": keys.get(name)}
    return found


def _signature(identities: dict[str, dict]) -> list[list]:
    return sorted([name, ident.get("sha256")] for name, ident in identities.items())


def _split_key(data_fingerprint, data_dir) -> str:
    return data_fingerprint or f"dir:{Path(data_dir).expanduser().resolve()}"


def _read(work_dir) -> list[dict]:
    path = WorkDir(work_dir).test_looks_file
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text())["looks"])
    except (ValueError, KeyError, TypeError) as error:
        raise MuffinError(f"{path} is not a test-look record ({error}); restore it from a backup, or delete it "
                          "knowing that the looks it recorded are forgotten") from error


def looks(work_dir, data_fingerprint: str | None = None, data_dir=None) -> list[dict]:
    """Every recorded look, oldest first; only those of one test split when its fingerprint (or data_dir) is given."""
    everything = _read(work_dir)
    if data_fingerprint is None and data_dir is None:
        return everything
    key = _split_key(data_fingerprint, data_dir)
    return [look for look in everything if look.get("split_key") == key]


def _names(look: dict) -> str:
    return ", ".join(look["candidates"]) or "no candidate"


def check_candidates(work_dir, candidates: dict[str, object], allow_new_look: bool, *, data_fingerprint=None,
                     data_dir=None, config_keys=None) -> None:
    """Raise MuffinError (one line) when the test split was already scored with another candidate set and this set
    never was, unless ``allow_new_look``. The same set again (a re-run) is always allowed."""
    earlier = looks(work_dir, data_fingerprint, data_dir)
    if allow_new_look or not earlier:
        return
    signature = _signature(identify(candidates, config_keys))
    if any(_signature(look["candidates"]) == signature for look in earlier):
        return
    last = earlier[-1]
    raise MuffinError(
        f"the test split was already scored ({len(earlier)} look(s) in {WorkDir(work_dir).test_looks_file}; the last "
        f"on {last['at']} by {last['who']} with {_names(last)}); scoring it again with another candidate set "
        f"({', '.join(sorted(candidates))}) would be a new look chosen after seeing test numbers: to do it anyway, "
        f"{FORCE}"
    )


def record_look(work_dir, who: str, candidates: dict[str, object], data_dir, *, data_fingerprint: str | None = None,
                config_keys: dict[str, str] | None = None) -> dict:
    """Record that ``who`` scored ``candidates`` (name -> checkpoint) on the test split of ``data_dir``; returns the
    look with ``n_looks`` (looks of this split so far) and ``new`` (False when this set had been scored before)."""
    if who not in WHO:
        raise ValueError(f"who must be one of {WHO}, got {who!r}")
    everything = _read(work_dir)
    identities = identify(candidates, config_keys)
    key = _split_key(data_fingerprint, data_dir)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    same = [look for look in everything
            if look.get("split_key") == key and _signature(look["candidates"]) == _signature(identities)]
    if same:
        look, new = same[0], False
        look.setdefault("repeats", []).append({"at": now, "who": who})
    else:
        look, new = {"at": now, "who": who, "candidates": identities, "split_key": key,
                     "data_fingerprint": data_fingerprint, "data_dir": str(Path(data_dir).expanduser().resolve()),
                     "code_version": code_version(), "repeats": []}, True
        everything.append(look)
    path = WorkDir(work_dir).test_looks_file
    write_text_atomic(path, json.dumps(jsonable({"version": RECORD_VERSION, "looks": everything}), indent=2) + "\n")
    n_looks = sum(1 for other in everything if other.get("split_key") == key)
    return {**look, "n_looks": n_looks, "new": new, "record": os.fspath(path)}
