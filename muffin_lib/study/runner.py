"""``python -m muffin_lib run``: the notebook series with papermill, in order, then its summary; resumable."""

from __future__ import annotations

import argparse
import ast
import contextlib
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from muffin_lib.config import DEFAULT_DATA_DIR, DEFAULT_WORK_DIR, PACKAGE_PARENT, WorkDir
from muffin_lib.errors import MuffinError
from muffin_lib.progress import watch_progress
from muffin_lib.study.notebook import PROFILES, check_parameter, training_parameters
from muffin_lib.study.summary import format_ending, synthetic_run, write_summary

NOTEBOOK_PATTERN = "[0-9][0-9]_*.ipynb"
KERNEL_NAME = "python3"
SERIES_PARAMETERS = ("data_dir", "work_dir", "profile")  # injected into every notebook
RUNNER_PROFILES = ("auto", *PROFILES)
# What the runner advises, by profile, once it finds the data synthetic.
_SYNTHETIC_ADVICE = {
    "auto": "; so the rest runs in the smoke profile (--profile full or quick forces a study)",
    "full": "; --profile smoke gets there in minutes",
}


def auto_profile(data_dir: Path) -> tuple[str, str]:
    """The profile ``--profile auto`` runs, and why: smoke on synthetic data, full with CUDA, else quick."""
    import torch

    if synthetic_run(data_dir, {}):
        return "smoke", "the data are the synthetic fallback"
    if torch.cuda.is_available():
        return "full", f"a CUDA GPU is available ({torch.cuda.get_device_name(0)})"
    return "quick", ("no CUDA GPU: selection (06-07) runs at 64 px / 8 epochs to fit about half an hour; "
                     "--profile full runs it at the deployed 128 px / 15 epochs (hours on a CPU, resumable)")


def default_notebooks_dir() -> Path:
    """``notebooks/`` beside the package: present in a clone or an editable install."""
    path = PACKAGE_PARENT / "notebooks"
    if not path.is_dir():
        raise MuffinError(
            f"no notebooks folder at {path}: the notebooks ship with the repository, not the installed "
            "package. Run from a clone (`pip install -e .`) or pass --notebooks-dir DIR."
        )
    return path


def find_notebooks(notebooks_dir: Path, only: str | list[str] | None = None) -> list[Path]:
    """The series in order; ``only`` ("03,04", ["3", "04_deeper_cnn"]) picks some of them."""
    notebooks = sorted(Path(notebooks_dir).glob(NOTEBOOK_PATTERN))
    if not notebooks:
        raise MuffinError(f"no notebooks matching {NOTEBOOK_PATTERN} in {notebooks_dir}; "
                          "check --notebooks-dir")
    if not only:
        return notebooks
    picked = []
    for token in [t.strip() for t in (only.split(",") if isinstance(only, str) else only) if t.strip()]:
        matches = [nb for nb in notebooks if token in (nb.stem, nb.name)
                   or (token.isdigit() and int(token) == int(nb.stem[:2]))]
        if not matches:
            names = ", ".join(nb.stem for nb in notebooks)
            raise MuffinError(f"--only {token!r} matches no notebook; the series is: {names}")
        picked.extend(m for m in matches if m not in picked)
    return sorted(picked)


def parse_value(text: str) -> Any:
    """A ``-p NAME VALUE`` value: a Python literal, a YAML list (``[simple_cnn, deeper_cnn]``), else text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    if text.strip().startswith(("[", "{")):
        import yaml

        with contextlib.suppress(yaml.YAMLError):
            return yaml.safe_load(text)
    return text


def notebook_parameters(path: Path) -> dict[str, Any]:
    """Name -> default of ``path``'s parameters cell, plus TrainConfig's if it uses ``train_config``."""
    import papermill

    known = {name: info["default"] for name, info in papermill.inspect_notebook(str(path)).items()}
    if "notebook.train_config(" in Path(path).read_text():
        for name, default in training_parameters().items():
            known.setdefault(name, repr(default))
    return known


def plan_series(notebooks: list[Path], series: dict[str, str], extras: dict[str, Any]) -> list[tuple]:
    """(notebook, the parameters it gets) for each notebook; every ``-p`` value is checked first."""
    plans = []
    for path in notebooks:
        known = notebook_parameters(path)
        plans.append((path, {k: v for k, v in {**series, **extras}.items() if k in known}, known))
    unused = [name for name in extras if not any(name in known for _, _, known in plans)]
    if unused:
        raise MuffinError(f"-p {', '.join(unused)}: no notebook run here has such a parameter; see the "
                          "parameters tables in notebooks/README.md")
    for name, value in extras.items():
        for _, _, known in plans:
            if name in known:
                try:
                    check_parameter(name, value, parse_value(known[name]))
                except MuffinError as error:
                    raise MuffinError(f"-p {error}") from None
    return [(path, injected) for path, injected, _ in plans]


@contextlib.contextmanager
def _kernel_environment() -> Iterator[None]:
    """Kernels inherit plain-text progress bars (unless turned off) and this muffin_lib first on the path."""
    saved = {key: os.environ.get(key) for key in ("MUFFIN_PROGRESS", "PYTHONPATH")}
    if os.environ.get("MUFFIN_PROGRESS", "").lower() != "off":
        os.environ["MUFFIN_PROGRESS"] = "text"
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_PARENT), saved["PYTHONPATH"]) if p)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _failure_message(name: str, error: BaseException, executed: Path) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(error, PapermillExecutionError):
        first_line = next((line for line in error.source.splitlines() if line.strip()), "")
        where = f"cell In [{error.exec_count}] (`{first_line.strip()[:80]}`)"
        what = f"{error.ename}: {error.evalue}"
    else:
        where, what = "while running", f"{type(error).__name__}: {error}"
    return (
        f"{name} failed in {where}: {what}\n"
        f"The executed notebook with the full output: {executed}\n"
        "Fix the cause and run the same command again: finished work is kept and resumed."
    )


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The default data folder, or an explicit one that must exist (00_setup would fill a typo)."""
    default = Path(DEFAULT_DATA_DIR).expanduser().resolve()
    if data_dir is None:
        return default
    path = Path(data_dir).expanduser().resolve()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise MuffinError(
            f"data folder {path} {what}. Fix the path given to --data-dir (or get the data there first: "
            f"`python -m muffin_lib fetch --data-dir {path}`), or leave --data-dir out to use the default "
            f"location, {default}, where 00_setup downloads the Kaggle data or makes a synthetic set."
        )
    return path


def _execute(path: Path, injected: dict, notebooks_dir: Path, workdir: WorkDir, log: _Log,
             record: dict) -> bool:
    """Run one notebook with papermill, filling its ``record``; whether it succeeded."""
    import papermill

    executed = workdir.executed_dir / path.name
    record.update(status="running", executed=str(executed), parameters=injected)
    t0 = time.perf_counter()
    watching = watch_progress(workdir.root / "progress.txt", log.progress) if log.enabled else nullcontext()
    try:
        with watching:  # the kernel's bars (trial i of N, epoch e of E, ETA) shown on this terminal
            papermill.execute_notebook(
                str(path), str(executed), parameters=injected, kernel_name=KERNEL_NAME,
                cwd=str(notebooks_dir), progress_bar=False,
                # ipykernel's start-up warning about unencrypted local TCP is noise on this terminal
                extra_arguments=["--IPKernelApp.log_level=ERROR"],
            )
    except KeyboardInterrupt:
        record.update(status="interrupted", seconds=round(time.perf_counter() - t0, 1))
        raise
    except Exception as error:  # papermill/nbclient raise several types; all end the series here
        failure = _failure_message(path.stem, error, executed)
        record.update(status="failed", seconds=round(time.perf_counter() - t0, 1), error=failure)
        log(f"    FAILED after {record['seconds']:.1f} s")
        return False
    record.update(status="ok", seconds=round(time.perf_counter() - t0, 1))
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return True


def run_series(*, profile: str = "auto", data_dir: str | Path | None = None,
               work_dir: str | Path | None = None, only: str | list[str] | None = None,
               parameters: dict[str, Any] | None = None, progress: bool = True,
               notebooks_dir: str | Path | None = None) -> dict:
    """Execute the notebooks in order with papermill; the summary, written before any failure is raised."""
    if profile not in RUNNER_PROFILES:
        raise MuffinError(f"--profile must be one of {RUNNER_PROFILES}, got {profile!r}")
    data_dir = resolve_data_dir(data_dir)
    workdir = WorkDir(work_dir or DEFAULT_WORK_DIR)
    notebooks_dir = Path(notebooks_dir).resolve() if notebooks_dir else default_notebooks_dir()
    series = {"data_dir": str(data_dir), "work_dir": str(workdir.root), "profile": profile}
    plans = plan_series(find_notebooks(notebooks_dir, only), series, dict(parameters or {}))
    records: dict[str, dict] = {}
    started, log = time.perf_counter(), _Log(progress)
    log(f"muffin-lab: {len(plans)} notebook(s), profile {profile}, data {data_dir}, work {workdir.root}")
    said_profile, warned_synthetic = "auto", False
    with _kernel_environment():
        for number, (path, injected) in enumerate(plans, 1):
            if profile == "auto" and "profile" in injected:
                injected["profile"], why = auto_profile(data_dir)
                if injected["profile"] != said_profile:  # said again only when it changes
                    said_profile = injected["profile"]
                    log(f"    profile auto -> {said_profile}: {why}")
            log(f"[{number}/{len(plans)}] {path.name} ...")
            records[path.stem] = record = {}
            try:
                if not _execute(path, injected, notebooks_dir, workdir, log, record):
                    break
            except KeyboardInterrupt:
                write_summary(workdir.root, data_dir, profile, records)
                raise
            log(f"    ok in {record['seconds']:.1f} s (total {time.perf_counter() - started:.0f} s)")
            if not warned_synthetic and synthetic_run(data_dir, {}):
                warned_synthetic = True
                log(f"    !!! the data in {data_dir} are SYNTHETIC: every number of this run only shows that "
                    f"the pipeline works{_SYNTHETIC_ADVICE.get(profile, '')}")
    for path, _ in plans[len(records):]:
        records[path.stem] = {"status": "not run (an earlier notebook failed)"}
    summary = write_summary(workdir.root, data_dir, profile, records)
    log(f"summary: {workdir.root / 'summary.md'}")
    failure = next((r["error"] for r in records.values() if r["status"] == "failed"), None)
    if failure:
        raise MuffinError(failure)
    return summary


class _Log:
    """The runner's lines; ``progress`` shows a notebook's step in place (a terminal) or every LOG_EVERY s."""

    LOG_EVERY = 30.0

    def __init__(self, enabled: bool):
        self.enabled, self._inline, self._logged_at = enabled, False, -math.inf

    def __call__(self, message: str) -> None:
        if self.enabled:
            if self._inline:
                sys.stdout.write("\r\033[K")
                self._inline = False
            print(message, flush=True)

    def progress(self, line: str) -> None:
        if not self.enabled:
            return
        if sys.stdout.isatty():
            width = shutil.get_terminal_size().columns - 5
            sys.stdout.write("\r\033[K    " + line[:width])
            sys.stdout.flush()
            self._inline = True
        elif time.monotonic() - self._logged_at >= self.LOG_EVERY:
            self._logged_at = time.monotonic()
            print(f"    {line}", flush=True)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile", choices=RUNNER_PROFILES, default="auto",
        help="full: the study at the deployed recipe (hours on a CPU); quick: selection (06-07) at 64 px / 8 "
        "epochs (about half an hour on 2 cores); smoke: tiny and fast; auto (default): smoke on the "
        "synthetic fallback, full with a CUDA GPU, quick otherwise",
    )
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"dataset folder (default: {DEFAULT_DATA_DIR})")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help=f"results, checkpoints, cache (default: {DEFAULT_WORK_DIR})")
    parser.add_argument("--only", default=None, help="run only these notebooks, e.g. 03,04")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="set a parameter in every notebook that has it, e.g. -p epochs 5 "
                        "-p image_size 64")
    parser.add_argument("--notebooks-dir", type=Path, default=None,
                        help="the notebooks (default: the repo's)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run_command(args: argparse.Namespace) -> int:
    # papermill logs every input/output path at INFO; the runner's own lines say the same more briefly
    verbose = getattr(args, "verbose", False)
    logging.getLogger("papermill").setLevel(logging.DEBUG if verbose else logging.WARNING)
    summary = run_series(
        profile=args.profile, data_dir=args.data_dir, work_dir=args.work_dir, only=args.only,
        parameters={name: parse_value(value) for name, value in args.parameter}, progress=not args.quiet,
        notebooks_dir=args.notebooks_dir,
    )
    print()
    print(format_ending(summary), end="")
    return 0
