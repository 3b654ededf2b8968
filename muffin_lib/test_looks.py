"""The record of every look at a dataset's test split (in the user's cache, keyed by the split's content
fingerprint, so a new work_dir is no clean slate), and :func:`gate`, which every test score passes first: a
checkpoint never scored on a split that has a look is refused unless forced, and a forced look is counted."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from muffin_lib.config import PACKAGE_PARENT, user_cache_dir
from muffin_lib.errors import MuffinError
from muffin_lib.files import jsonable, write_text_atomic
from muffin_lib.text import plural

WHO = ("09_final_test", "evaluate_on_split", "predict")
FORCE = {
    "09_final_test": "set the notebook 09 parameter allow_new_test_look = True "
                     "(runner: -p allow_new_test_look True)",
    "predict": "pass --allow-new-test-look to predict",
    "evaluate_on_split": "pass allow_new_look=True to evaluate_on_split",
}
RECORD_VERSION = 2


def code_version() -> str:
    """``git rev-parse --short HEAD`` of the checkout muffin_lib runs from, else the package version."""
    from muffin_lib import __version__

    if (PACKAGE_PARENT / ".git").exists():
        try:
            out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PACKAGE_PARENT,
                                 capture_output=True, text=True, timeout=10, check=False)
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
    """name -> {checkpoint, sha256, config_key}; an ensemble (a dict of member checkpoints) by its ``members``
    and the sha256 of their sorted (name, sha256) pairs (None when a member file is missing)."""
    keys = config_keys or {}
    found = {}
    for name, checkpoint in sorted(candidates.items()):
        if isinstance(checkpoint, dict):
            members = identify(checkpoint, keys)
            pairs = sorted([member, ident.get("sha256")] for member, ident in members.items())
            digest = (None if any(sha is None for _, sha in pairs)
                      else hashlib.sha256(json.dumps(pairs).encode()).hexdigest())
            found[str(name)] = {"checkpoint": None, "sha256": digest, "config_key": None, "members": members}
            continue
        path = Path(checkpoint)
        sha = file_sha256(path) if path.is_file() else None
        found[str(name)] = {"checkpoint": str(path.resolve()), "sha256": sha, "config_key": keys.get(name)}
    return found


def record_file(data_fingerprint: str) -> Path:
    return user_cache_dir() / "test_looks" / f"{data_fingerprint[:32]}.json"


def looks(data_fingerprint: str) -> list[dict]:
    """Every recorded look at the test split with this fingerprint, oldest first."""
    path = record_file(data_fingerprint)
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text())["looks"])
    except (ValueError, KeyError, TypeError) as error:
        raise MuffinError(f"{path} is not a test-look record ({error}); restore it from a backup, or delete "
                          "it knowing that the looks it recorded are forgotten") from error


def _checkpoints(identities: dict[str, dict]) -> set:
    """The sha256 of every checkpoint in a candidate set, ensembles' members included."""
    found = set()
    for ident in identities.values():
        found |= _checkpoints(ident["members"]) if "members" in ident else {ident.get("sha256")}
    return found


def gate(who: str, candidates: dict[str, object], data_dir, *, data_fingerprint: str,
         config_keys: dict[str, str] | None = None, allow_new_look: bool = False) -> dict:
    """Record a look before scoring ``candidates`` (name -> checkpoint) on the test split, refusing a new
    one once the split has a look unless ``allow_new_look``; returns the look with ``n_looks`` and ``new``."""
    if who not in WHO:
        raise ValueError(f"who must be one of {WHO}, got {who!r}")
    earlier = looks(data_fingerprint)
    identities = identify(candidates, config_keys)
    seen = set().union(*(_checkpoints(look["candidates"]) for look in earlier))
    scored = _checkpoints(identities)
    new = None in scored or not scored <= seen
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path = record_file(data_fingerprint)
    if new and earlier and not allow_new_look:
        last = earlier[-1]
        names = ", ".join(last["candidates"]) or "no candidate"
        raise MuffinError(
            f"this test split was already scored ({plural(len(earlier), 'look')}, the last on {last['at']} "
            f"by {last['who']} with {names}; record {path}): scoring "
            f"{', '.join(sorted(candidates))} would be a new look chosen after seeing test numbers; to do it "
            f"anyway, {FORCE[who]}"
        )
    if new:
        look = {"at": now, "who": who, "candidates": identities, "data_fingerprint": data_fingerprint,
                "data_dir": str(Path(data_dir).expanduser().resolve()), "code_version": code_version(),
                "forced": bool(earlier), "repeats": []}
        earlier.append(look)
    else:
        look = earlier[-1]
        look.setdefault("repeats", []).append({"at": now, "who": who, "candidates": sorted(candidates)})
    record = jsonable({"version": RECORD_VERSION, "looks": earlier})
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")
    return {**look, "n_looks": len(earlier), "new": new, "record": os.fspath(path)}


def look_label(look: dict | None) -> str:
    """What every test number carries: "" for the first and only look, else "look N of this test split"."""
    n = (look or {}).get("n_looks") or 1
    return "" if n == 1 else f"look {n} of this test split"
