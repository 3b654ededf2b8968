"""Get the data into DATA_DIR/train|test/{chihuahua,muffin}: Kaggle download, a local zip, or synthetic.

``fetch_dataset(source="auto")`` uses a complete DATA_DIR as it is, else downloads from Kaggle
(kagglehub first: public data needs no login; then the kaggle package when credentials exist), else
writes the synthetic demo set and says so loudly. Every Kaggle failure (offline, no credentials, the
kaggle package's auth banner and ``SystemExit``) becomes one message that says what to do.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import logging
import os
import shutil
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

from muffin_lib import config
from muffin_lib.data.extract import copy_layout, is_complete, safe_extract_zip
from muffin_lib.data.synthetic import is_synthetic, make_synthetic_dataset
from muffin_lib.errors import MuffinError

log = logging.getLogger(__name__)

KAGGLE_URL = f"https://www.kaggle.com/datasets/{config.KAGGLE_DATASET}"
SOURCES = ("auto", "kaggle", "synthetic")
_CREDENTIAL_NAMES = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN")


@dataclass
class FetchResult:
    data_dir: Path
    source_used: str  # "existing" | "kaggle" | "zip" | "synthetic"
    synthetic: bool
    message: str


class KaggleUnavailable(MuffinError):
    """The Kaggle download failed; the message lists each attempt and what the user can do."""

    def __init__(self, summary: str, advice: str = ""):
        self.summary = summary
        super().__init__(f"{summary}\n{advice}" if advice else summary)


def how_to_get_real_data(data_dir: str | os.PathLike) -> str:
    return (
        "To get the real photos, either\n"
        "  1. create a Kaggle API token (https://www.kaggle.com/settings -> API -> Create New Token) and "
        "either export KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), or save kaggle.json in "
        "~/.kaggle/, or on Colab add KAGGLE_USERNAME and KAGGLE_KEY as notebook secrets (key icon); then run\n"
        f"       python -m muffin_lib fetch --source kaggle --data-dir {data_dir}\n"
        "  2. or download the zip by hand (Download button) from\n"
        f"       {KAGGLE_URL}\n"
        "     and run\n"
        f"       python -m muffin_lib fetch --zip PATH/TO/archive.zip --data-dir {data_dir}"
    )


def _colab_secrets_to_env() -> None:
    """On Colab, copy Kaggle secrets the user granted into env vars for the kaggle package (never printed)."""
    if importlib.util.find_spec("google") is None or importlib.util.find_spec("google.colab") is None:
        return
    try:
        from google.colab import userdata
    except ImportError:
        return
    for name in _CREDENTIAL_NAMES:
        if os.environ.get(name):
            continue
        try:
            value = userdata.get(name)
        except Exception:  # not defined, or the notebook was not granted access
            continue
        if value:
            os.environ[name] = value


def kaggle_credentials_source() -> str | None:
    """Where Kaggle credentials were found (for messages), or None."""
    _colab_secrets_to_env()
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "the KAGGLE_API_TOKEN environment variable"
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "the KAGGLE_USERNAME/KAGGLE_KEY environment variables"
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")
    for name in ("kaggle.json", "access_token", "credentials.json"):
        if (config_dir / name).is_file():
            return str(config_dir / name)
    return None


def _short(error: BaseException, limit: int = 100) -> str:
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _download_with_kagglehub(data_dir: Path) -> None:
    import kagglehub
    import requests

    try:
        folder = kagglehub.dataset_download(config.KAGGLE_DATASET)
    except requests.ConnectionError as error:
        raise KaggleUnavailable(f"kagglehub: no connection to Kaggle - offline? ({_short(error, 60)})") from None
    except Exception as error:  # kagglehub raises its own and requests' errors for HTTP/auth problems
        raise KaggleUnavailable(f"kagglehub: {_short(error)}") from None
    copy_layout(folder, data_dir)


def _download_with_kaggle_package(data_dir: Path) -> None:
    where = kaggle_credentials_source()
    # Importing kaggle authenticates at once and, without credentials, prints a long banner and calls
    # exit(1); keep the banner out of the user's output and turn the exit into our message.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
        except (Exception, SystemExit) as error:
            if where is None:
                raise KaggleUnavailable("kaggle package: no Kaggle credentials found") from None
            raise KaggleUnavailable(
                f"kaggle package: the credentials in {where} were not accepted ({_short(error)})"
            ) from None
    download_dir = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.download-", dir=data_dir.parent))
    try:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                api.dataset_download_files(
                    config.KAGGLE_DATASET, path=str(download_dir), quiet=True, unzip=False
                )
        except (Exception, SystemExit) as error:
            raise KaggleUnavailable(f"kaggle package: download failed ({_short(error)})") from None
        zips = sorted(download_dir.glob("*.zip"))
        if not zips:
            raise KaggleUnavailable(f"kaggle package: the download gave no zip file in {download_dir}")
        safe_extract_zip(zips[0], data_dir)
    finally:
        shutil.rmtree(download_dir, ignore_errors=True)


def download_from_kaggle(data_dir: str | os.PathLike, *, quiet: bool = False) -> Path:
    """Download the Kaggle dataset into ``data_dir``; raises KaggleUnavailable with what to do."""
    data_dir = Path(data_dir)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for name, attempt in (("kagglehub", _download_with_kagglehub), ("kaggle", _download_with_kaggle_package)):
        if importlib.util.find_spec(name) is None:
            failures.append(f"{name}: not installed (pip install {name})")
            continue
        if not quiet:
            print(f"trying to download {config.KAGGLE_DATASET} with {name} ...", flush=True)
        try:
            attempt(data_dir)
            return data_dir
        except KaggleUnavailable as error:
            failures.append(str(error))
    summary = f"Could not download the Kaggle dataset {config.KAGGLE_DATASET}:\n" + "\n".join(
        f"  - {failure}" for failure in failures
    )
    raise KaggleUnavailable(summary, how_to_get_real_data(data_dir))


def synthetic_banner(data_dir: str | os.PathLike, reason: str, width: int = 96) -> str:
    """A multi-line, ``!``-framed warning that the data is synthetic, why, and how to get the real data."""
    paragraphs = [
        "USING A SYNTHETIC DATASET: drawn shapes, NOT the Kaggle muffin/chihuahua photos.",
        "Accuracies measured on it say nothing about real images.",
        f"Data folder: {data_dir}",
        "",
        *reason.splitlines(),
        "",
        *how_to_get_real_data(data_dir).splitlines(),
    ]
    lines = []
    for paragraph in paragraphs:
        indent = " " * (len(paragraph) - len(paragraph.lstrip()))
        wrapped = textwrap.wrap(
            paragraph.lstrip(),
            width - 4,
            initial_indent=indent,
            subsequent_indent=indent + "   ",
            break_long_words=False,
            break_on_hyphens=False,
        )
        lines += wrapped or [""]
    width = max(width, max(len(line) for line in lines) + 4)  # a long path or URL stays whole
    frame = "!" * width
    return "\n".join([frame, *(f"! {line.ljust(width - 4)} !" for line in lines), frame])


def _make_synthetic(data_dir: Path, reason: str, quiet: bool) -> FetchResult:
    if not (is_complete(data_dir) and is_synthetic(data_dir)):
        make_synthetic_dataset(data_dir)
    banner = synthetic_banner(data_dir, reason)
    if quiet:
        log.warning("using the SYNTHETIC dataset in %s (%s)", data_dir, reason.splitlines()[0])
    else:
        print(banner, flush=True)
    return FetchResult(data_dir, "synthetic", True, banner)


def fetch_dataset(data_dir: str | os.PathLike, source: str = "auto", *, quiet: bool = False) -> FetchResult:
    """Make ``data_dir`` hold the dataset; ``source`` is "auto", "kaggle" or "synthetic"."""
    if source not in SOURCES:
        raise MuffinError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    data_dir = Path(data_dir).expanduser().resolve()
    complete, synthetic = is_complete(data_dir), is_synthetic(data_dir)

    if source == "synthetic":
        if complete and not synthetic:
            raise MuffinError(f"{data_dir} holds real data; choose another --data-dir for the synthetic set")
        return _make_synthetic(data_dir, "You asked for it (--source synthetic).", quiet)

    if complete and not synthetic:
        message = f"{data_dir} already holds the complete dataset; nothing to download"
        if not quiet:
            print(message)
        return FetchResult(data_dir, "existing", False, message)
    if complete and synthetic and source == "auto":
        return _make_synthetic(data_dir, "It was made earlier because the Kaggle download was not possible.", quiet)

    try:
        download_from_kaggle(data_dir, quiet=quiet)
    except KaggleUnavailable as error:
        if source == "kaggle":
            raise
        return _make_synthetic(data_dir, error.summary, quiet)
    message = f"downloaded {config.KAGGLE_DATASET} into {data_dir}"
    if not quiet:
        print(message)
    return FetchResult(data_dir, "kaggle", False, message)


def fetch_from_zip(zip_path: str | os.PathLike, data_dir: str | os.PathLike, *, quiet: bool = False) -> FetchResult:
    """Extract a hand-downloaded Kaggle archive into ``data_dir`` (safely, atomically)."""
    data_dir = Path(data_dir).expanduser().resolve()
    safe_extract_zip(Path(zip_path).expanduser(), data_dir)
    message = f"{data_dir} holds the dataset from {zip_path}"
    if not quiet:
        print(message)
    return FetchResult(data_dir, "zip", False, message)


def add_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=config.DEFAULT_DATA_DIR,
        help=f"where the dataset goes (default: {config.DEFAULT_DATA_DIR}; env MUFFIN_DATA_DIR)",
    )
    parser.add_argument(
        "--source",
        choices=SOURCES,
        default="auto",
        help="auto: keep a complete data dir, else Kaggle, else synthetic (default: auto)",
    )
    parser.add_argument(
        "--zip", type=Path, metavar="PATH", help=f"extract an archive you downloaded by hand from {KAGGLE_URL}"
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")


def fetch_command(args: argparse.Namespace) -> int:
    if args.zip is not None:
        result = fetch_from_zip(args.zip, args.data_dir)
    else:
        result = fetch_dataset(args.data_dir, args.source)
    if args.json:
        summary = {"data_dir": str(result.data_dir), "source": result.source_used, "synthetic": result.synthetic}
        print(json.dumps(summary))
    return 0
