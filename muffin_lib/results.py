"""The results files of the series, ``work_dir/results/<notebook>.json``, written by each notebook."""

from __future__ import annotations

import json
from pathlib import Path

from muffin_lib.config import WorkDir
from muffin_lib.errors import MuffinError


def require_results(work_dir: str | Path, notebook: str) -> dict:
    """The results another notebook saved, or a MuffinError saying to run it first."""
    path = results_path(work_dir, notebook)
    if not path.is_file():
        raise MuffinError(f"no results {path}: run notebooks/{notebook}.ipynb first (same work_dir), "
                          "then this one.")
    return json.loads(path.read_text())


def results_path(work_dir: str | Path, notebook: str) -> Path:
    return WorkDir(work_dir).results_dir / f"{notebook}.json"


def load_all_results(work_dir: str | Path) -> dict[str, dict]:
    """Every notebook's results file in ``work_dir``, by notebook name, in name order."""
    results = {}
    for path in sorted(WorkDir(work_dir).results_dir.glob("*.json")):
        try:
            results[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise MuffinError(f"{path} is not valid JSON ({error}); delete it and re-run "
                              f"{path.stem}.ipynb") from None
    return results
