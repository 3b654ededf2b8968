"""summary.json and summary.md of a run, and the short ending the terminal shows."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timezone
from pathlib import Path

from muffin_lib.config import WorkDir
from muffin_lib.results import load_all_results
from muffin_lib.study.notebook import synthetic_banner
from muffin_lib.study.report import format_ci
from muffin_lib.test_looks import look_label
from muffin_lib.text import plural


def synthetic_run(data_dir: Path, results: dict[str, dict]) -> bool | None:
    """Whether the data are the synthetic set: the data folder's marker, else what 00_setup recorded."""
    if data_dir.is_dir():
        from muffin_lib.data.synthetic import is_synthetic

        return bool(is_synthetic(data_dir))
    return results.get("00_setup", {}).get("synthetic")


def _from_earlier_run(record: dict) -> dict:
    """A previous summary's record, its status saying so ("ok (earlier run, <when>)", or "not run yet")."""
    if record.get("earlier_run"):
        return record
    status = record.get("status", "")
    if status.startswith("not run"):
        return {**record, "status": "not run yet", "earlier_run": True}
    when = record.get("finished_at")
    with contextlib.suppress(TypeError, ValueError):
        when = datetime.fromisoformat(when).strftime("%Y-%m-%d %H:%M UTC")
    return {**record, "status": f"{status} (earlier run{f', {when}' if when else ''})", "earlier_run": True}


def write_summary(work_dir: str | Path, data_dir: Path, profile: str, records: dict[str, dict]) -> dict:
    """summary.json and summary.md of this run's records, earlier ones (``--only``) and the results."""
    workdir = WorkDir(work_dir)
    if profile == "auto":  # say which profile(s) it chose
        used = sorted({r.get("parameters", {}).get("profile") for r in records.values()} - {None})
        profile = f"auto ({', '.join(used)})" if used else profile
    summary_json = workdir.root / "summary.json"
    previous = {}
    if summary_json.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            previous = json.loads(summary_json.read_text()).get("notebooks", {})
    earlier = {name: _from_earlier_run(record) for name, record in previous.items() if name not in records}
    results = load_all_results(workdir.root)
    models: dict[str, dict] = {}
    for result in results.values():
        for model, numbers in (result.get("models") or {}).items():
            models.setdefault(model, {}).update(numbers)
    summary = {"written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "profile": profile,
               "data_dir": str(data_dir), "work_dir": str(workdir.root),
               "synthetic": synthetic_run(data_dir, results),
               "environment": results.get("00_setup", {}).get("environment"),
               "notebooks": dict(sorted({**earlier, **records}.items())), "models": models,
               "findings": [{"notebook": name, "text": text} for name, result in results.items()
                            for text in result.get("findings") or []],
               "results": results}
    summary_json.write_text(json.dumps(summary, indent=2))
    (workdir.root / "summary.md").write_text(format_summary(summary))
    return summary


def _ci_cell(numbers: dict, value_key: str, ci_key: str) -> str:
    value = numbers.get(value_key)
    if value is None:
        return ""
    low, high = numbers.get(ci_key) or (None, None)
    return format_ci(value, low, high)


def _n_test_looks(summary: dict) -> int | None:
    return ((summary.get("results") or {}).get("09_final_test") or {}).get("n_test_looks")


_MODELS_INTRO = (
    "Test: scored once (notebook 09) with 95% Wilson intervals, on the **twin-free** part of the test split "
    "(test images with no near-duplicate in train: the headline) and on the whole split. CV: twin-grouped "
    "K-fold cross-validation risk on the training split with the corrected (Nadeau-Bengio) 95% t interval; "
    "nested CV for the tuned procedure. Validation: the shared twin-grouped hold-out, 95% Wilson interval."
)


def _models_section(models: dict[str, dict], look: str) -> list[str]:
    """summary.md's table of each model's zero-one losses, and which precision trained each."""
    lines = ["", "## Zero-one loss per model", "", _MODELS_INTRO, "",
             "| model | test, twin-free [95% CI] | test, whole split [95% CI] | CV risk [95% CI] "
             "| validation [95% CI] |", "|---|---|---|---|---|"]
    for model, numbers in models.items():
        cv = _ci_cell(numbers, "cv_risk", "cv_ci")
        if cv and numbers.get("cv_kind") == "nested":
            cv += " (nested CV)"
        if cv and numbers.get("cv_settings"):
            cv += f" at {numbers['cv_settings']}"  # which budget produced it (selection.budget)
        cells = [
            _looked(_ci_cell(numbers, "test_twin_free", "test_twin_free_ci"), look),
            _looked(_ci_cell(numbers, "test_zero_one_loss", "test_ci"), look),
            cv,
            _ci_cell(numbers, "val_zero_one_loss", "val_ci"),
        ]
        named = f"{model} at {numbers['off_recipe']}" if numbers.get("off_recipe") else model
        lines.append(f"| {named} | " + " | ".join(cells) + " |")
    trained_in = [f"{model} {n['precision']}" for model, n in models.items() if n.get("precision")]
    if trained_in:
        lines += ["", "Precision (which one trained each model, and why): " + "; ".join(trained_in) + "."]
    return lines


def format_summary(summary: dict) -> str:
    """The Markdown summary: a loud synthetic-data warning, the notebook table, models, findings."""
    lines = ["# muffin-lab: summary of the notebook series", ""]
    if summary["synthetic"]:
        lines += [synthetic_banner(summary["data_dir"]), ""]
    elif summary["synthetic"] is None:
        lines += ["> Data folder not found: no notebook has fetched the data yet.", ""]
    lines += [
        f"- profile: **{summary['profile']}**",
        f"- data: `{summary['data_dir']}`" + (" (**SYNTHETIC**)" if summary["synthetic"] else ""),
        f"- work_dir: `{summary['work_dir']}`",
    ]
    environment = summary.get("environment") or {}
    if environment.get("summary"):
        lines.append(f"- environment: {environment['summary']}")
    n_looks = _n_test_looks(summary)
    if n_looks is not None:  # more than 1: a forced look, counted beside every test number
        lines.append(f"- test split looks: {n_looks}")
    lines += ["", "## Notebooks", "", "| notebook | status | seconds |", "|---|---|---|"]
    for name, record in summary["notebooks"].items():
        seconds = record.get("seconds")
        lines.append(f"| {name} | {record['status']} | {'' if seconds is None else f'{seconds:.1f}'} |")
    total = sum(record.get("seconds") or 0 for record in summary["notebooks"].values())
    lines.append(f"| **total** | | {total:.1f} |")
    if summary["models"]:
        lines += _models_section(summary["models"], look_label({"n_looks": n_looks}))
    if summary["findings"]:
        lines += ["", "## Findings (computed by the notebooks)", ""]
        lines += [f"- **{f['notebook']}**: {f['text']}" for f in summary["findings"]]
    for name, record in summary["notebooks"].items():
        if record["status"].startswith("failed"):
            lines += ["", f"## {name} {record['status']}", "", "```", record.get("error", ""), "```"]
    return "\n".join(lines) + "\n"


ENDING_MODELS = 6  # the terminal ending shows this many models at most; summary.md has them all
# (heading, value key, interval key) of the ending's results columns, headline first.
ENDING_COLUMNS = (("test, twin-free", "test_twin_free", "test_twin_free_ci"),
                  ("test, whole", "test_zero_one_loss", "test_ci"),
                  ("CV risk", "cv_risk", "cv_ci"), ("validation", "val_zero_one_loss", "val_ci"))


def format_ending(summary: dict) -> str:
    """What ``run`` prints at the end: the notebooks' status, models' losses, where summary.md is."""
    notebooks = summary["notebooks"]
    total = sum(record.get("seconds") or 0 for record in notebooks.values())
    lines = [f"muffin-lab: {plural(len(notebooks), 'notebook')}, {total:.0f} s, profile {summary['profile']}"]
    if summary["synthetic"]:
        lines.append("!!! SYNTHETIC data (every number only shows that the pipeline runs): "
                     f"{summary['data_dir']}")
    width = max((len(name) for name in notebooks), default=0) + 2
    status_width = max((len(record["status"]) for record in notebooks.values()), default=0) + 2
    for name, record in notebooks.items():
        seconds = record.get("seconds")
        lines.append(f"  {name:<{width}}{record['status']:<{status_width}}"
                     f"{'' if seconds is None else f'{seconds:8.1f} s'}".rstrip())
    lines += _ending_models(summary["models"])
    look = look_label({"n_looks": _n_test_looks(summary)})
    if look:
        lines.append(f"test numbers: {look} (a forced look)")
    lines.append(f"full summary ({plural(len(summary['findings']), 'finding')}, settings, all numbers): "
                 f"{Path(summary['work_dir']) / 'summary.md'}")
    return "\n".join(lines) + "\n"


def _looked(cell: str, look: str) -> str:
    return f"{cell} ({look})" if cell and look else cell


def _ending_models(models: dict[str, dict]) -> list[str]:
    """Zero-one loss [95% CI] of the first ENDING_MODELS models, in the columns some model has."""
    if not models:
        return []
    columns = [c for c in ENDING_COLUMNS if any(n.get(c[1]) is not None for n in models.values())]
    lines = [f"{'zero-one loss [95% CI]':<24}" + "".join(f"{heading:<21}" for heading, _, _ in columns)]
    for model, numbers in list(models.items())[:ENDING_MODELS]:
        cells = "".join(f"{_ci_cell(numbers, value, ci):<21}" for _, value, ci in columns)
        lines.append(f"  {model[:20]:<22}{cells}")
    if len(models) > ENDING_MODELS:
        lines.append(f"  ... and {plural(len(models) - ENDING_MODELS, 'more model')} in summary.md")
    return [line.rstrip() for line in lines]
