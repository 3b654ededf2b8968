"""The committed notebooks: valid, stripped of outputs, parameterised, mocked for nbmake, Colab-ready."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import nbformat
import papermill
import pytest

from muffin_lib.errors import MuffinError
from muffin_lib.study import colab, notebook

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
REQUIRED_PARAMETERS = {"data_dir", "work_dir", "profile", "device"}
# 09 scores the checkpoints as they were trained: it has no image settings of its own.
IMAGE_PARAMETERS = {"seed", "image_size", "color_mode"}
SYNC_HINT = "run `python -m muffin_lib.study.colab` to rewrite the Colab cells from colab.REPO_URL"
TRAINING = ["03_simple_cnn", "04_deeper_cnn", "05_resnet_like", "06_grid_search", "07_cv_risk"]


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
    assert names == assigned, (f"papermill cannot read {assigned - names}: "
                               "keep comments free of ';' and brackets")
    # papermill's defaults are what a reader sees in the cell
    assert re.search(r'^profile = "full"', cell.source, re.M)
    assert re.search(r'^data_dir = "\.\./data/muffin-vs-chihuahua"', cell.source, re.M)
    assert re.search(r'^work_dir = "\.\./work"', cell.source, re.M)

    # notebook.start reads the parameters cell's names itself: no notebook restates them.
    starts = [c.source for c in nb.cells if c.cell_type == "code" and "notebook.start(" in c.source]
    assert len(starts) == 1 and f'params = notebook.start("{path.stem}", globals())' in starts[0]
    if path.stem != "09_final_test":
        assert names >= IMAGE_PARAMETERS, f"missing parameters: {IMAGE_PARAMETERS - names}"

    mock = cell.metadata["nbmake"]["mock"]
    assert mock["profile"] == "smoke"
    assert mock["data_dir"] == "../work/nbmake/data" and mock["work_dir"] == "../work/nbmake/work"
    assert set(mock) <= names, "nbmake mocks a name the parameters cell does not define"

    relpath = path.relative_to(ROOT).as_posix()
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    assert first.source.split("\n")[0] == colab.colab_badge(relpath), SYNC_HINT
    install = [c for c in nb.cells if colab.COLAB_INSTALL_TAG in c.metadata.get("tags", [])]
    assert len(install) == 1 and install[0].source == colab.colab_install_source(), SYNC_HINT
    assert nb.cells.index(install[0]) < nb.cells.index(cell), "the Colab install must come before any import"


def test_launcher_has_badge_parameters_and_the_notebooks_install_cell():
    nb = _read(LAUNCHER)
    assert nb.cells[0].source.split("\n")[0] == colab.colab_badge("colab/muffin_lab_colab.ipynb"), SYNC_HINT
    assert {"repo_url", "profile", "use_drive", "data_dir", "only", "extra_parameters"} <= set(
        papermill.inspect_notebook(str(LAUNCHER)))
    install = [c for c in nb.cells if colab.COLAB_INSTALL_TAG in c.metadata.get("tags", [])]
    assert len(install) == 1 and install[0].source == colab.colab_install_source(), SYNC_HINT
    # The launcher alone decides where the code is (a clone of repo_url, Drive, a zip): MUFFIN_REPO
    # says which.
    source = [c for c in nb.cells if "colab-source" in c.metadata.get("tags", [])]
    assert len(source) == 1 and nb.cells.index(source[0]) < nb.cells.index(install[0])
    assert 'os.environ["MUFFIN_REPO"]' in source[0].source and "repo_url" in source[0].source


def test_the_install_cell_is_short_and_names_the_code_in_one_place():
    source = colab.colab_install_source()
    assert len(source.splitlines()) <= 5 and max(map(len, source.splitlines())) <= 110
    assert 'os.environ.get("MUFFIN_REPO", "git+' + colab.REPO_URL + '")' in source
    readme = (ROOT / "colab" / "README.md").read_text()
    assert colab.colab_badge("colab/muffin_lab_colab.ipynb") in readme


def test_every_parameter_is_documented():
    readme = (ROOT / "notebooks" / "README.md").read_text()
    for path in NOTEBOOKS:
        section = readme.split(f"### {path.stem}", 1)
        assert len(section) == 2, f"notebooks/README.md has no '### {path.stem}' section"
        table = section[1].split("\n### ", 1)[0]
        for name, parameter in papermill.inspect_notebook(str(path)).items():
            row = f"| `{name}` | `{parameter['default']}` |"
            assert row in table, f"{path.stem}: notebooks/README.md lacks the row starting {row!r}"


@pytest.mark.parametrize("name", ["03_simple_cnn", "04_deeper_cnn", "05_resnet_like"])
def test_training_notebooks_default_to_the_library_recipe(name):
    import ast

    from muffin_lib.training.recipe import TrainConfig

    defaults = papermill.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"))
    recipe = TrainConfig()
    for field in ("image_size", "color_mode", "epochs", "lr", "batch_size", "augment", "label_smoothing",
                  "seed"):
        assert ast.literal_eval(defaults[field]["default"]) == getattr(recipe, field), f"{name}: {field}"


@pytest.mark.parametrize("name", ["06_grid_search", "07_cv_risk"])
def test_selection_notebooks_default_to_the_library_budget(name):
    import ast

    from muffin_lib.selection.budget import SELECTION
    from muffin_lib.training.recipe import TrainConfig

    inspected = papermill.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"))
    defaults = {k: ast.literal_eval(v["default"]) for k, v in inspected.items()}
    expected = {
        "image_size": SELECTION.image_size,
        "epochs": SELECTION.epochs,
        "n_splits": SELECTION.n_splits,
        "learning_rates": list(SELECTION.learning_rates),
        "batch_sizes": list(SELECTION.batch_sizes),
        "rung_epochs": list(SELECTION.rung_epochs),
        "inner_splits": SELECTION.inner_splits,
        **{field: getattr(TrainConfig(), field) for field in ("color_mode", "lr", "batch_size", "augment",
                                                              "label_smoothing", "seed")},
    }
    for field, value in expected.items():
        if field in defaults:
            assert defaults[field] == value, f"{name}: {field}"


def test_cv_cli_defaults_are_the_budget_and_recipe():
    from muffin_lib.cli import build_parser
    from muffin_lib.selection.budget import SELECTION
    from muffin_lib.training.recipe import TrainConfig

    args = build_parser("cv").parse_args(["cv"])
    assert args.image_size == [SELECTION.image_size] and args.epochs == [SELECTION.epochs]
    assert args.color_mode == [TrainConfig().color_mode]
    assert (args.folds, args.inner_folds) == (SELECTION.n_splits, SELECTION.inner_splits)


def test_train_cli_defaults_are_the_recipe():
    from muffin_lib.cli import build_parser
    from muffin_lib.training.recipe import TrainConfig
    from muffin_lib.training.train import config_from_args

    assert config_from_args(build_parser("train").parse_args(["train"])) == TrainConfig()


def _library_defaults(name: str) -> dict:
    """What each notebook's parameters must default to: the recipe, the selection budget (06-07), the
    transfer recipe (08) and the split settings, all from the library."""
    from muffin_lib.data.splits import N_SPLITS, VAL_FRACTION
    from muffin_lib.selection.budget import SELECTION
    from muffin_lib.training.recipe import TRANSFER_RECIPE, TrainConfig

    recipe = TRANSFER_RECIPE if name.startswith("08") else TrainConfig()
    fields = ("image_size", "color_mode", "epochs", "lr", "batch_size", "augment", "label_smoothing", "seed")
    expected = {field: getattr(recipe, field) for field in fields}
    expected.update(val_fraction=VAL_FRACTION, n_splits=N_SPLITS, pretrained=recipe.pretrained)
    if name.startswith(("06", "07")):
        expected.update(image_size=SELECTION.image_size, epochs=SELECTION.epochs,
                        inner_splits=SELECTION.inner_splits,
                        learning_rates=list(SELECTION.learning_rates),
                        batch_sizes=list(SELECTION.batch_sizes),
                        rung_epochs=list(SELECTION.rung_epochs))
    return expected


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_defaults_to_the_library(path):
    import ast

    defaults = {k: ast.literal_eval(v["default"]) for k, v in papermill.inspect_notebook(str(path)).items()}
    expected = _library_defaults(path.stem)
    checked = sorted(set(defaults) & set(expected))
    assert {k: defaults[k] for k in checked} == {k: expected[k] for k in checked}
    assert path.stem == "09_final_test" or {"image_size", "color_mode"} <= set(checked)


# ----------------------------------------------------------------------------- parameters, read by start


def _namespace(path: Path, *later: str) -> dict:
    """A notebook kernel's globals after its parameters cell (and ``later`` cells, e.g. papermill's), with the
    IPython history ``In`` that notebook.start reads; the last entry is the cell calling start."""
    source = _parameters_cell(_read(path)).source
    namespace: dict = {}
    for cell in (source, *later):
        exec(cell, namespace)
    namespace.pop("__builtins__")
    namespace["In"] = ["", "import os", source, *later, f'params = notebook.start("{path.stem}", globals())']
    return namespace


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_start_reads_the_parameters_cell_and_papermills_additions(path, tmp_path):
    names = set(papermill.inspect_notebook(str(path)))
    work_dir = str(tmp_path)
    # papermill injects after the parameters cell; nbmake sets its mocks one by one
    injected = f'# Parameters\nwork_dir = "{work_dir}"\nprofile = "smoke"\nsome_new_name = 3\n'
    settings = notebook.start(path.stem, _namespace(path, injected, "profile = 'smoke'"))
    assert set(settings) == names - {"profile"} | {"some_new_name"}
    assert settings.profile == "smoke" and settings.work_dir == tmp_path.resolve()
    assert settings.some_new_name == 3


def test_start_without_a_parameters_cell_says_what_to_run():
    with pytest.raises(MuffinError, match="run the cell tagged 'parameters' first"):
        notebook.start("03_simple_cnn", {"In": ["", "import os", "x = 1"], "x": 1})


def test_start_outside_ipython_takes_the_plain_public_names(tmp_path):
    import os

    namespace = {"os": os, "_hidden": 1, "data_dir": str(tmp_path), "work_dir": str(tmp_path),
                 "profile": "full", "epochs": 3, "models": ["simple_cnn"]}
    settings = notebook.start("07_cv_risk", namespace)
    assert set(settings) == {"data_dir", "work_dir", "epochs", "models"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_parameter_is_used(path):
    """A parameter no cell reads would be dropped silently: each one is read as params.NAME (or
    params["NAME"]) in a code cell, or is a TrainConfig field of a notebook that calls
    notebook.train_config."""
    from muffin_lib.training.recipe import TrainConfig

    nb = _read(path)
    cell = _parameters_cell(nb)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code" and c is not cell)
    fields = {f.name for f in dataclasses.fields(TrainConfig)} if "notebook.train_config(" in code else set()
    for name in set(papermill.inspect_notebook(str(path))) - {"profile"} - fields:
        assert re.search(rf"\bparams(\.{name}\b|\[\"{name}\"\])", code), f"{path.stem}: no cell uses {name}"


def test_a_parameter_no_cell_used_is_an_error_naming_it(tmp_path):
    path = ROOT / "notebooks" / "04_deeper_cnn.ipynb"
    namespace = _namespace(path, f'# Parameters\nwork_dir = "{tmp_path}"\nweight_decy = 0.1\n')
    settings = notebook.start(path.stem, namespace)
    for name in settings:
        if name != "weight_decy":
            settings[name]
    unused = r"no cell used the parameter\(s\) weight_decy \(did you mean weight_decay\?\)"
    with pytest.raises(MuffinError, match=unused):
        notebook.save_results(settings, {})
    assert not (tmp_path / "results").exists()
    settings["weight_decy"]
    assert notebook.save_results(settings, {}).is_file()


@pytest.mark.parametrize("name", TRAINING)
def test_a_new_train_config_field_is_a_parameter_of_the_training_notebooks(name, monkeypatch, tmp_path):
    """No edit but the field: the runner passes it to 03-07 (-p), start takes papermill's injected name, and
    train_config puts it in the config."""
    from muffin_lib.study.runner import notebook_parameters
    from muffin_lib.training import recipe

    @dataclasses.dataclass(frozen=True)
    class Extended(recipe.TrainConfig):
        warmup_epochs: int = 0

    monkeypatch.setattr(recipe, "TrainConfig", Extended)
    path = ROOT / "notebooks" / f"{name}.ipynb"
    assert notebook_parameters(path)["warmup_epochs"] == "0"
    injected = f'# Parameters\nwork_dir = "{tmp_path}"\nwarmup_epochs = 2\n'
    settings = notebook.start(name, _namespace(path, injected))
    config = notebook.train_config(settings, "simple_cnn")
    assert isinstance(config, Extended) and config.warmup_epochs == 2
    assert "warmup_epochs" not in settings.unread()
    with pytest.raises(MuffinError, match="warmup_epochs: expected .*, got .two."):  # checked by its name
        notebook.start(name, _namespace(path, '# Parameters\nwarmup_epochs = "two"\n'))


@pytest.mark.parametrize("name", ["00_setup", "01_exploration", "02_preprocessing", "09_final_test"])
def test_notebooks_that_do_not_train_take_no_train_config_fields(name):
    from muffin_lib.study.runner import notebook_parameters

    known = notebook_parameters(ROOT / "notebooks" / f"{name}.ipynb")
    assert "weight_decay" not in known and known.keys() == papermill.inspect_notebook(
        str(ROOT / "notebooks" / f"{name}.ipynb")).keys()


def test_a_parameter_of_another_kind_is_not_type_checked():
    notebook.check_parameter("colours", {"muffin": "red"}, {"muffin": "brown"})  # a dict: no rule, no crash
    with pytest.raises(MuffinError, match="epochs: expected a whole number"):
        notebook.check_parameter("epochs", "abc", 15)
