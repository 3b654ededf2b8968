"""``python -m muffin_lib <command>``: each command's module provides ``add_<name>_arguments(parser)`` and
``<name>_command(args) -> int``, imported only when that command runs."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from muffin_lib.errors import MuffinError

COMMANDS: dict[str, tuple[str, str]] = {
    "fetch": ("muffin_lib.data.fetch", "download the Kaggle dataset (or make the synthetic demo set)"),
    "audit": ("muffin_lib.data.scan",
              "scan and validate a dataset folder; report counts, sizes, duplicates, rejects"),
    "split": ("muffin_lib.data.splits", "show the twin-grouped validation split and CV folds a run will use"),
    "train": ("muffin_lib.training.train", "train one model on the train split and save a checkpoint"),
    "predict": ("muffin_lib.training.predict", "classify image files or folders with a checkpoint"),
    "bench": ("muffin_lib.training.bench", "measure images/s of the reference pipeline and ours"),
    "cv": ("muffin_lib.selection.cli", "grid search scored by K-fold cross-validation (resumable)"),
    "run": ("muffin_lib.study.runner", "execute the notebook series with papermill and summarise it"),
}
DISTRIBUTION = "muffin-lab"  # the name pip knows, and the installed script's


def version() -> str:
    from muffin_lib import __version__

    return __version__


def prog_name() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return DISTRIBUTION if os.path.splitext(name)[0] == DISTRIBUTION else "python -m muffin_lib"


class _VersionAction(argparse.Action):
    """``--version``, which looks the version up only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{DISTRIBUTION} {version()}")
        parser.exit()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (all of them when it is None, none when "")."""
    description = "muffin-lab: one sub-command per step of the study; COMMAND --help for its options."
    parser = argparse.ArgumentParser(prog=prog_name(), description=description)
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if command in (None, name):
            module = importlib.import_module(module_name)
            getattr(module, f"add_{name}_arguments")(command_parser)
        command_parser.set_defaults(_module=module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if arg in COMMANDS), None)
    if command is None and "--version" in argv:
        command = ""  # nothing to import: --version prints and exits before a command is needed
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    command = getattr(importlib.import_module(args._module), f"{args.command}_command")
    try:
        return int(command(args) or 0)
    except MuffinError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        return 130
