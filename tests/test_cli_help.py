"""Help and messages a user can act on (issue 30, item 8): every flag's help states its default,
``--version``, ``audit --data-dir``, the program named as it was invoked, and counts that read right."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import sys
from pathlib import Path

import pytest

from muffin_lib import cli
from muffin_lib.config import COLOR_MODES, DEFAULT_DATA_DIR
from muffin_lib.data.synthetic import make_synthetic_dataset
from muffin_lib.text import plural

# `run`'s parser lives in study/runner.py, whose owner keeps these two as they are (no default to state:
# every notebook runs, no parameter is set).
EXEMPT = {("run", "--only"), ("run", "--parameter")}
NO_DEFAULT = (argparse._HelpAction, argparse._StoreTrueAction, argparse._StoreFalseAction,
              argparse._VersionAction, argparse._SubParsersAction, cli._VersionAction)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options_needing_a_default(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, NO_DEFAULT) or action.required or action.help == argparse.SUPPRESS:
            continue
        yield action


def _expanded_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return parser._get_formatter()._expand_help(action)  # what --help prints, %(default)s filled in


def test_every_option_of_every_command_states_its_default():
    missing = []
    commands = _subparsers(cli.build_parser())
    assert set(commands) == set(cli.COMMANDS)
    for name, parser in commands.items():
        for action in _options_needing_a_default(parser):
            flag = (max(action.option_strings, key=len) if action.option_strings
                    else action.metavar or action.dest)
            if (name, flag) not in EXEMPT and "default" not in _expanded_help(parser, action):
                missing.append(f"{name} {flag}")
    assert missing == [], f"help without its default: {missing}"


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_each_command_help_renders_with_its_defaults(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "%(" not in out and "(default:" in out
    assert out.startswith(f"usage: {cli.prog_name()} {command}")


def test_cv_color_mode_lists_the_color_modes():
    parser = _subparsers(cli.build_parser("cv"))["cv"]
    action = next(a for a in parser._actions if "--color-mode" in a.option_strings)
    text = _expanded_help(parser, action)
    assert all(mode in text for mode in COLOR_MODES) and "default: rgb" in text


def test_bench_flags_state_their_defaults_and_choices():
    parser = _subparsers(cli.build_parser("bench"))["bench"]
    helps = {a.option_strings[-1]: _expanded_help(parser, a) for a in parser._actions if a.option_strings}
    assert "(default: deeper_cnn)" in helps["--model"] and "simple_cnn" in helps["--model"]
    assert "(default: grayscale)" in helps["--color-mode"] and "(default: 64)" in helps["--batch-size"]


def test_version_prints_the_distribution_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"muffin-lab {importlib.metadata.version('muffin-lab')}\n"


def test_version_falls_back_to_pyproject_when_not_installed(monkeypatch):
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    expected = tomllib.loads(pyproject.read_text())["project"]["version"]

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert cli.version() == expected


def test_version_needs_no_command_module(monkeypatch, capsys):
    imported = []
    real_import = cli.importlib.import_module
    monkeypatch.setattr(cli.importlib, "import_module",
                        lambda name: imported.append(name) or real_import(name))
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert imported == [] and capsys.readouterr().out.startswith("muffin-lab ")


@pytest.mark.parametrize(("argv0", "prog"), [
    ("/home/me/.venv/bin/muffin-lab", "muffin-lab"),
    ("muffin-lab", "muffin-lab"),
    ("muffin-lab.exe", "muffin-lab"),  # the script pip writes on Windows
    ("/repo/muffin_lib/__main__.py", "python -m muffin_lib"),
    ("", "python -m muffin_lib"),
])
def test_usage_names_the_program_as_it_was_invoked(argv0, prog, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [argv0, "--help"])
    with pytest.raises(SystemExit):
        cli.main()
    assert capsys.readouterr().out.startswith(f"usage: {prog} [-h]")
    with pytest.raises(SystemExit):
        cli.main(["audit", "--help"])
    assert capsys.readouterr().out.startswith(f"usage: {prog} audit")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["audit", "--no-such-flag"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(f"usage: {prog} ") and f"\n{prog}: error: " in err


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audit") / "data"
    return make_synthetic_dataset(root, n_train=8, n_test=4, image_size=32, seed=0)


def _audit_json(argv, capsys) -> dict:
    assert cli.main(["audit", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_audit_takes_data_dir_as_a_flag_like_every_other_command(small_data, capsys, monkeypatch):
    monkeypatch.setenv("MUFFIN_PROGRESS", "off")
    positional = _audit_json([str(small_data)], capsys)
    assert positional["n_images"] == 12
    assert _audit_json(["--data-dir", str(small_data)], capsys) == positional
    # both forms naming the same folder are fine
    assert _audit_json([str(small_data), "--data-dir", str(small_data / ".." / small_data.name)],
                       capsys) == positional


def test_audit_refuses_two_different_data_dirs(small_data, tmp_path, capsys):
    assert cli.main(["audit", str(small_data), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: two dataset folders given") and str(tmp_path) in err and "--data-dir" in err


def test_audit_without_a_folder_audits_the_default():
    from muffin_lib.data.scan import _audit_data_dir

    parser = _subparsers(cli.build_parser("audit"))["audit"]
    assert _audit_data_dir(parser.parse_args([])) == DEFAULT_DATA_DIR
    assert _audit_data_dir(parser.parse_args(["--data-dir", "x"])) == Path("x")
    assert _audit_data_dir(parser.parse_args(["y"])) == Path("y")


def test_counts_read_right():
    assert plural(1, "epoch") == "1 epoch" and plural(2, "epoch") == "2 epochs"
    assert plural(0, "file") == "0 files"
    assert plural(1, "extra copy", "extra copies") == "1 extra copy"
    assert plural(3, "extra copy", "extra copies") == "3 extra copies"

    from muffin_lib.selection.budget import settings_label

    assert settings_label(32, 1).startswith("32 px, 1 epoch (")


def test_no_library_message_says_a_count_of_plural_things_as_a_parenthesised_s():
    # "1 epoch(s)" reads as a form letter: say the count with plural() instead
    package = Path(cli.__file__).resolve().parent
    found = [f"{path.relative_to(package)}:{n}" for path in package.rglob("*.py")
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"\}( [\w-]+){1,3}\(s\)", line) and path.name not in ("runner.py", "train.py")]
    assert found == []
