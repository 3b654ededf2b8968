"""The committed notebooks: valid, stripped of outputs, parameterised, mocked for nbmake, Colab-ready."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import papermill
import pytest

from muffin_lib.study import notebook

ROOT = Path(__file__).resolve().parents[1]
SERIES = [
    "00_setup",
    "01_exploration",
    "02_preprocessing",
    "03_simple_cnn",
    "04_deeper_cnn",
    "05_resnet_like",
    "06_grid_search",
    "07_cv_risk",
    "08_transfer_learning",
    "09_final_test",
]
NOTEBOOKS = [ROOT / "notebooks" / f"{name}.ipynb" for name in SERIES]
LAUNCHER = ROOT / "colab" / "muffin_lab_colab.ipynb"
REQUIRED_PARAMETERS = {"data_dir", "work_dir", "profile", "seed", "image_size", "color_mode", "device"}
SYNC_HINT = "run `python -m muffin_lib.study.notebook` to rewrite the Colab cells from notebook.REPO_URL"


def test_the_series_is_exactly_the_ten_notebooks():
    assert sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) == SERIES


def _read(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return nb


def _parameters_cell(nb):
    tagged = [cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters' (papermill injects after it)"
    return tagged[0]


@pytest.mark.parametrize("path", [*NOTEBOOKS, LAUNCHER], ids=lambda p: p.stem)
def test_committed_without_outputs(path: Path):
    nb = _read(path)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: clear them before committing"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    assert nb.metadata.kernelspec.name == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_mock_and_colab_cells(path: Path):
    nb = _read(path)
    cell = _parameters_cell(nb)
    names = set(papermill.inspect_notebook(str(path)))
    assert names >= REQUIRED_PARAMETERS, f"missing parameters: {REQUIRED_PARAMETERS - names}"
    assigned = set(re.findall(r"^(\w+) = ", cell.source, re.M))
    assert names == assigned, f"papermill cannot read {assigned - names}: keep comments free of ';' and brackets"
    # papermill's defaults are what a reader sees in the cell
    assert re.search(r'^profile = "full"', cell.source, re.M)
    assert re.search(r'^data_dir = "\.\./data/muffin-vs-chihuahua"', cell.source, re.M)
    assert re.search(r'^work_dir = "\.\./work"', cell.source, re.M)

    # Every parameter but profile reaches notebook.start, so params.<name> has it (and the profile applies).
    start = next(c.source for c in nb.cells if c.cell_type == "code" and "notebook.start(" in c.source)
    passed = set(re.findall(r"\b(\w+)=\1\b", start))
    assert names - {"profile"} <= passed, f"parameters not passed to notebook.start: {names - {'profile'} - passed}"

    mock = cell.metadata["nbmake"]["mock"]
    assert mock["profile"] == "smoke"
    assert mock["data_dir"] == "../work/nbmake/data" and mock["work_dir"] == "../work/nbmake/work"
    assert set(mock) <= names, "nbmake mocks a name the parameters cell does not define"

    relpath = path.relative_to(ROOT).as_posix()
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    assert first.source.split("\n")[0] == notebook.colab_badge(relpath), SYNC_HINT
    install = [c for c in nb.cells if notebook.COLAB_INSTALL_TAG in c.metadata.get("tags", [])]
    assert len(install) == 1 and install[0].source == notebook.colab_install_source(), SYNC_HINT
    assert nb.cells.index(install[0]) < nb.cells.index(cell), "the Colab install must come before any import"


def test_launcher_has_badge_parameters_and_clone_cell():
    nb = _read(LAUNCHER)
    assert nb.cells[0].source.split("\n")[0] == notebook.colab_badge("colab/muffin_lab_colab.ipynb"), SYNC_HINT
    assert {"profile", "use_drive", "data_dir", "only", "extra_parameters"} <= set(papermill.inspect_notebook(str(LAUNCHER)))
    clone = [c for c in nb.cells if notebook.COLAB_CLONE_TAG in c.metadata.get("tags", [])]
    assert len(clone) == 1 and clone[0].source == notebook.colab_clone_source(), SYNC_HINT
    readme = (ROOT / "colab" / "README.md").read_text()
    assert notebook.colab_badge("colab/muffin_lab_colab.ipynb") in readme


def test_every_parameter_is_documented():
    readme = (ROOT / "notebooks" / "README.md").read_text()
    for path in NOTEBOOKS:
        section = readme.split(f"### {path.stem}", 1)
        assert len(section) == 2, f"notebooks/README.md has no '### {path.stem}' section"
        table = section[1].split("\n### ", 1)[0]
        for name, parameter in papermill.inspect_notebook(str(path)).items():
            row = f"| `{name}` | `{parameter['default']}` |"
            assert row in table, f"{path.stem}: notebooks/README.md lacks the row starting {row!r}"


def test_training_notebooks_are_built_from_the_one_template():
    import runpy

    builder = runpy.run_path(str(ROOT / "scripts" / "build_model_notebooks.py"), run_name="not_main")
    assert builder["main"](["--check"]) == 0, "edit scripts/build_model_notebooks.py and run it; never edit 03-05"


@pytest.mark.parametrize("name", ["03_simple_cnn", "04_deeper_cnn", "05_resnet_like"])
def test_training_notebooks_default_to_the_library_recipe(name):
    import ast

    from muffin_lib.training.engine import TrainConfig

    defaults = papermill.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"))
    recipe = TrainConfig()
    for field in ("image_size", "color_mode", "epochs", "lr", "batch_size", "augment", "label_smoothing", "seed"):
        assert ast.literal_eval(defaults[field]["default"]) == getattr(recipe, field), f"{name}: {field}"


@pytest.mark.parametrize("name", ["06_grid_search", "07_cv_risk"])
def test_selection_notebooks_default_to_the_library_budget(name):
    import ast

    from muffin_lib.selection.budget import SELECTION
    from muffin_lib.training.engine import TrainConfig

    defaults = {k: ast.literal_eval(v["default"]) for k, v in papermill.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb")).items()}
    expected = {
        "image_size": SELECTION.image_size,
        "epochs": SELECTION.epochs,
        "n_splits": SELECTION.n_splits,
        "learning_rates": list(SELECTION.learning_rates),
        "batch_sizes": list(SELECTION.batch_sizes),
        "rung_epochs": list(SELECTION.rung_epochs),
        "inner_splits": SELECTION.inner_splits,
        **{field: getattr(TrainConfig(), field) for field in ("color_mode", "lr", "batch_size", "augment", "label_smoothing", "seed")},
    }
    for field, value in expected.items():
        if field in defaults:
            assert defaults[field] == value, f"{name}: {field}"


def test_cv_cli_defaults_are_the_budget_and_recipe():
    from muffin_lib.cli import build_parser
    from muffin_lib.selection.budget import SELECTION
    from muffin_lib.training.engine import TrainConfig

    args = build_parser("cv").parse_args(["cv"])
    assert args.image_size == [SELECTION.image_size] and args.epochs == [SELECTION.epochs]
    assert args.color_mode == [TrainConfig().color_mode]
    assert (args.folds, args.inner_folds) == (SELECTION.n_splits, SELECTION.inner_splits)


def test_train_cli_defaults_are_the_recipe():
    from muffin_lib.cli import build_parser
    from muffin_lib.training.engine import TrainConfig

    args = build_parser("train").parse_args(["train"])
    recipe = TrainConfig()
    for field in ("image_size", "color_mode", "epochs", "lr", "batch_size", "augment", "label_smoothing", "seed"):
        assert getattr(args, field) == getattr(recipe, field), field


def _library_defaults(name: str) -> dict:
    """What each notebook's parameters must default to: the recipe, the selection budget (06-07), the
    transfer recipe (08) and the split settings, all from the library."""
    from muffin_lib.data.splits import N_SPLITS, VAL_FRACTION
    from muffin_lib.selection.budget import SELECTION
    from muffin_lib.training.engine import TRANSFER_RECIPE, TrainConfig

    recipe = TRANSFER_RECIPE if name.startswith("08") else TrainConfig()
    fields = ("image_size", "color_mode", "epochs", "lr", "batch_size", "augment", "label_smoothing", "seed")
    expected = {field: getattr(recipe, field) for field in fields}
    expected.update(val_fraction=VAL_FRACTION, n_splits=N_SPLITS, pretrained=recipe.pretrained)
    if name.startswith(("06", "07")):
        expected.update(image_size=SELECTION.image_size, epochs=SELECTION.epochs, inner_splits=SELECTION.inner_splits,
                        learning_rates=list(SELECTION.learning_rates), batch_sizes=list(SELECTION.batch_sizes),
                        rung_epochs=list(SELECTION.rung_epochs))
    return expected


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_defaults_to_the_library(path):
    import ast

    defaults = {k: ast.literal_eval(v["default"]) for k, v in papermill.inspect_notebook(str(path)).items()}
    expected = _library_defaults(path.stem)
    checked = sorted(set(defaults) & set(expected))
    assert {k: defaults[k] for k in checked} == {k: expected[k] for k in checked}
    assert "image_size" in checked and "color_mode" in checked
