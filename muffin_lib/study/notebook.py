"""What the notebooks share: ``params = notebook.start(NAME, globals())``, prerequisites, figures, results."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from muffin_lib.config import WorkDir
from muffin_lib.errors import MuffinError
from muffin_lib.files import jsonable, write_text_atomic
from muffin_lib.results import load_all_results, require_results, results_path  # noqa: F401  (notebook.*)
from muffin_lib.study.report import format_ci  # noqa: F401  (notebooks call notebook.format_ci)

PROFILES = ("full", "quick", "smoke")
# The quick profile (a laptop CPU) gives only 06-07 selection.budget.QUICK, and only where a parameter is
# still at the full budget's default.
QUICK_NOTEBOOKS = ("06_grid_search", "07_cv_risk")
QUICK_KEYS = ("image_size", "epochs", "rung_epochs", "inner_splits")
# The smoke profile only caps sizes (a smaller value a user passes survives; None, "auto" are capped too).
# Trials of a few seconds take one worker: starting worker processes would cost more than it saves.
SMOKE_CAPS = {"image_size": 32, "epochs": 1, "loop_epochs": 1, "n_splits": 2, "inner_splits": 2,
              "n_preview": 4, "n_samples": 8, "max_images": 600, "workers": 1}
SMOKE_LIST_LENGTHS: dict[str, int] = {"learning_rates": 2, "batch_sizes": 1, "models": 4, "rung_epochs": 0}


class Settings(dict):
    """A notebook's parameters after the profile, which remembers the ones read (``settings.epochs``)."""

    def __init__(self, name: str, profile: str, values: dict[str, Any], changed: dict[str, Any]):
        super().__init__(values)
        self._name, self._profile, self._changed = name, profile, changed
        self._read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self._read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self._read.add(key)
        return super().get(key, default)

    def unread(self) -> list[str]:
        return [key for key in self if key not in self._read]

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"{self._name} has no parameter {key!r}") from None

    name = property(lambda self: self._name)
    profile = property(lambda self: self._profile)
    workdir = property(lambda self: WorkDir(self["work_dir"]))

    def _repr_markdown_(self) -> str:
        rows = ["| parameter | value |", "|---|---|"]
        for key, value in self.items():
            note = f" (profile {self._profile}; was `{self._changed[key]!r}`)" if key in self._changed else ""
            rows.append(f"| `{key}` | `{value!s}`{note} |")
        return f"**{self._name}** parameters, profile **{self._profile}**\n\n" + "\n".join(rows)


def apply_profile(profile: str, name: str, params: dict[str, Any]) -> Settings:
    """The parameters of notebook ``name`` under ``profile``; ``data_dir`` and ``work_dir`` made absolute."""
    if profile not in PROFILES:
        raise MuffinError(f"{name}: profile must be one of {PROFILES}, got {profile!r}; "
                          "set the 'profile' parameter")
    values = dict(params)
    for key in ("data_dir", "work_dir"):
        if key in values:
            values[key] = Path(values[key]).expanduser().resolve()
    changed: dict[str, Any] = {}
    if profile == "quick" and name in QUICK_NOTEBOOKS:
        from muffin_lib.selection.budget import FULL, QUICK

        for key in QUICK_KEYS:
            full, quick = getattr(FULL, key), getattr(QUICK, key)
            if key in values and _same(values[key], full) and not _same(values[key], quick):
                changed[key], values[key] = values[key], (list(quick) if isinstance(quick, tuple) else quick)
    if profile == "smoke":
        for key, cap in SMOKE_CAPS.items():
            value = values.get(key, cap)
            if value is None or value == "auto" or (isinstance(value, int) and value > cap):
                changed[key], values[key] = values[key], cap
        for key, length in SMOKE_LIST_LENGTHS.items():
            if isinstance(values.get(key), (list, tuple)) and len(values[key]) > length:
                changed[key], values[key] = values[key], list(values[key])[:length]
    return Settings(name, profile, values, changed)


def transfer_config(settings: Settings):
    """The transfer model's recipe (``recipe.TRANSFER_RECIPE``: what 08 trains) with ``settings``' seed and
    colour mode; the smoke profile caps its image size and epochs as it caps 08's."""
    from muffin_lib.training.recipe import TRANSFER_RECIPE as recipe

    changes = {"seed": settings["seed"], "color_mode": settings["color_mode"]}
    if settings.profile == "smoke":
        changes.update({key: min(getattr(recipe, key), SMOKE_CAPS[key]) for key in ("image_size", "epochs")})
    return recipe.replace(**changes)


# List parameters whose items are training settings (recipe.check_setting checks each item).
_LIST_SETTINGS = {"learning_rates": "lr", "batch_sizes": "batch_size", "models": "model",
                  "rung_epochs": "epochs", "compare_with": "model"}
_KINDS = ((bool, "true or false"), (int, "a whole number"), (float, "a number"), (str, "text"),
          (list, "a list"))


def check_parameter(name: str, value: Any, default: Any) -> None:
    """A MuffinError, e.g. "epochs: expected a whole number >= 1, got 'abc'", for a bad value."""
    from muffin_lib.training.recipe import TrainConfig, check_setting

    if name in {f.name for f in dataclasses.fields(TrainConfig)}:
        check_setting(name, value)
    elif name in _LIST_SETTINGS and isinstance(value, (list, tuple)):
        for item in value:
            try:
                check_setting(_LIST_SETTINGS[name], item)
            except MuffinError as error:
                raise MuffinError(f"{name}: each item {str(error).split(': ', 1)[1]}") from None
    elif default not in (None, "auto") and value is not None:  # "auto" parameters also take numbers
        kind, text = next(((k, t) for k, t in _KINDS if isinstance(default, k)), (None, None))
        if kind is None:  # a default of another kind (a dict, a tuple): no rule to check it by
            return
        fits = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float:
            fits = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not fits:
            raise MuffinError(f"{name}: expected {text} (the default is {default!r}), got {value!r}")


def _same(value: Any, default: Any) -> bool:
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple)) and list(value) == list(default)
    return value == default


def _shell():
    """The running IPython shell, or None outside one."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def show_errors_briefly() -> None:
    """In IPython, a MuffinError shows its message instead of a long traceback (still a cell error)."""
    shell = _shell()
    if shell is None:
        return

    def brief(shell, etype, value, tb, tb_offset=None):
        message = f"{etype.__name__}: {value}"
        shell._showtraceback(etype, value, [message])
        return [message]

    shell.set_custom_exc((MuffinError,), brief)


_SERIES_NAMES = frozenset({"data_dir", "work_dir", "profile"})  # runner.SERIES_PARAMETERS mark that cell
_PAPERMILL_MARK = "# Parameters"  # the first line of the cell papermill injects after the parameters cell
_PLAIN = (str, int, float, bool, list, tuple, dict, type(None))


def _assigned_names(source: str) -> list[str] | None:
    """The names a cell of plain assignments (``name = value``) sets; None for any other cell."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    names = []
    for node in body:
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            names += [t.id for t in node.targets]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
        else:
            return None
    return names or None


def parameter_names(namespace: dict[str, Any]) -> list[str]:
    """The names set by the parameters cell and papermill's injected cell (or, without ``In``, plain ones)."""
    history = namespace.get("In")
    if not isinstance(history, list):
        return [k for k, v in namespace.items() if not k.startswith("_") and isinstance(v, _PLAIN)]
    for i in range(len(history) - 1, -1, -1):
        names = _assigned_names(history[i])
        if names and set(names) >= _SERIES_NAMES and not history[i].lstrip().startswith(_PAPERMILL_MARK):
            later = [s for s in history[i + 1:] if s.lstrip().startswith(_PAPERMILL_MARK)]
            return list(dict.fromkeys(names + [n for s in later for n in _assigned_names(s) or []]))
    raise MuffinError("notebook.start found no parameters cell: run the cell tagged 'parameters' first "
                      "(the one that sets data_dir, work_dir and profile)")


def start(name: str, namespace: dict[str, Any]) -> Settings:
    """First call of every notebook: its parameters checked, the profile applied, brief errors, text bars."""
    show_errors_briefly()
    shell = _shell()  # plain-text bars under papermill, whose executed copy keeps only a widget's first frame
    if shell is not None and "MUFFIN_PROGRESS" not in os.environ and any(
            str(source).startswith(_PAPERMILL_MARK) for source in shell.user_ns.get("In", [])):
        os.environ["MUFFIN_PROGRESS"] = "text"
    params = {key: namespace[key] for key in parameter_names(namespace) if key != "profile"}
    for key, value in params.items():  # a bad training setting stops here, in the first cell
        check_parameter(key, value, default=None)
    return apply_profile(namespace.get("profile", "full"), name, params)


def cv_folds(plan, labels, max_images: int | None, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The folds of ``plan``, or as many over a seeded, stratified, twin-grouped subset of ``max_images``."""
    from muffin_lib.data.splits import grouped_part
    from muffin_lib.selection import stratified_folds

    labels = np.asarray(labels)
    if max_images is None or max_images >= len(labels):
        return plan.folds
    _, subset = grouped_part(labels, plan.groups, max_images / len(labels), seed)
    return stratified_folds(labels, len(plan.folds), seed, indices=subset, groups=plan.groups)


def require_data(data_dir: str | Path) -> bool:
    """Check the dataset is there (else say: run 00_setup); whether it is synthetic (with a loud banner)."""
    from muffin_lib.data.extract import is_complete
    from muffin_lib.data.synthetic import is_synthetic

    if not is_complete(data_dir):
        raise MuffinError(
            f"no complete dataset in {data_dir} (it needs train/ and test/ with the same class folders of "
            "images, e.g. muffin/ and chihuahua/). Run notebooks/00_setup.ipynb first (it downloads the "
            "Kaggle data or makes the synthetic set), or set the data_dir parameter to the dataset folder."
        )
    synthetic = is_synthetic(data_dir)
    if synthetic:
        display_markdown(synthetic_banner(data_dir))
    return synthetic


def synthetic_banner(data_dir: str | Path) -> str:
    return (
        f"> **⚠️ SYNTHETIC DATA** in `{data_dir}`: generated shapes, not muffin or Chihuahua photos. "
        "Every number below only shows that the pipeline runs; none of it is a finding about the real "
        "dataset. Run `00_setup` with Kaggle access (or set `data_dir`) for the real study."
    )


def checkpoint_path(work_dir: str | Path, model: str) -> Path:
    return WorkDir(work_dir).checkpoints_dir / f"{model}.pt"


def save_results(settings: Settings, results: dict[str, Any]) -> Path:
    """Write ``results`` with the notebook's name, profile and parameters for the runner's summary."""
    check_all_used(settings)
    payload = {"notebook": settings.name, "profile": settings.profile,
               "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "parameters": dict(settings), **results}
    path = results_path(settings.work_dir, settings.name)
    return write_text_atomic(path, json.dumps(jsonable(payload), indent=2))


def check_all_used(settings: Settings) -> None:
    """A MuffinError naming each parameter no cell read, with the nearest known name when one is close."""
    from muffin_lib.training import recipe

    unread = settings.unread()
    if not unread:
        return
    known = [f.name for f in dataclasses.fields(recipe.TrainConfig)]
    known += [k for k in settings if k not in unread]
    hints = []
    for key in unread:
        close = difflib.get_close_matches(key, known, n=1)
        hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
    raise MuffinError(
        f"{settings.name}: no cell used the parameter(s) {', '.join(hints)}; remove them from the parameters "
        "cell (a training setting must be named as a TrainConfig field), or run the cells that use them"
    )


def display_markdown(text: str) -> None:
    """Show ``text`` as Markdown in a notebook; print it elsewhere."""
    if _shell() is None:
        print(text)
        return
    from IPython.display import Markdown, display

    display(Markdown(text))


def show_figure(fig, settings: Settings, name: str) -> None:
    """Save ``fig`` as ``figures/<notebook-number>_<name>.png`` under work_dir, show it inline, close it."""
    import matplotlib.pyplot as plt

    from muffin_lib.study.plots import save_figure

    save_figure(fig, settings.work_dir, f"{settings.name[:2]}_{name}")
    if _shell() is not None:
        from IPython.display import display

        display(fig)
    plt.close(fig)


def training_parameters() -> dict[str, Any]:
    """The TrainConfig fields but the model, at their defaults: parameters of :func:`train_config`."""
    from muffin_lib.training import recipe

    return {f.name: getattr(recipe.TrainConfig(), f.name) for f in dataclasses.fields(recipe.TrainConfig)
            if f.name != "model"}


def train_config(settings: Settings, model: str, **overrides):
    """The ``recipe.TrainConfig`` of ``model`` with every TrainConfig field these settings hold."""
    from muffin_lib.training import recipe

    values = {f.name: settings[f.name] for f in dataclasses.fields(recipe.TrainConfig) if f.name in settings}
    return recipe.TrainConfig(**{**values, "model": model, **overrides})


def display_findings(findings: list[str]) -> None:
    display_markdown("\n".join(f"- {finding}" for finding in findings))


def require_same_settings(settings: Settings, grid_results: dict) -> None:
    """Notebook 07 reuses 06's folds and grid: stop with a clear message when 06 ran with other settings."""
    theirs = {k: grid_results["base_config"][k] for k in ("image_size", "color_mode", "seed")}
    theirs.update(n_splits=grid_results["n_folds"], max_images=grid_results.get("max_images"))
    mismatch = {k: (v, settings[k]) for k, v in theirs.items() if v != settings[k]}
    if mismatch:
        raise MuffinError(
            "notebook 06 ran with other settings than this one ("
            + ", ".join(f"{k}: 06 had {a}, here {b}" for k, (a, b) in mismatch.items())
            + "); run 06_grid_search.ipynb again with the same parameters, then this notebook."
        )


def display_candidates(candidates: dict, missing: list[str]) -> None:
    """The checkpoints notebook 09 will score, and which training notebooks have not run yet."""
    lines = [f"- **{name}**: `{path}`" for name, path in candidates.items()]
    if missing:
        lines.append(f"- not available yet (run them first to include their models): {', '.join(missing)}")
    display_markdown("\n".join(lines) or "No candidates: run notebooks 03-05 and 08 first.")
