"""Get the data into DATA_DIR/train|test/<class>/: Kaggle download (kagglehub, then the kaggle package), a
local zip, or the synthetic set, said loudly. Each Kaggle failure becomes one sentence of what happened and
what to do (``explain_kaggle_error``); a key is never printed.
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
import socket
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
KAGGLE_TOKEN_PAGE = "https://www.kaggle.com/settings"
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
    return ("To get the real photos, either\n"
            "  1. create a Kaggle API token (https://www.kaggle.com/settings -> API -> Create New Token) and "
            "either export KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), or save kaggle.json in "
            "~/.kaggle/, or on Colab add KAGGLE_USERNAME and KAGGLE_KEY as notebook secrets (key icon); "
            "then run\n"
            f"       python -m muffin_lib fetch --source kaggle --data-dir {data_dir}\n"
            "  2. or download the zip by hand (Download button) from\n"
            f"       {KAGGLE_URL}\n"
            "     and run\n"
            f"       python -m muffin_lib fetch --zip PATH/TO/archive.zip --data-dir {data_dir}")


def _colab_secrets_to_env() -> None:
    """On Colab, copy Kaggle secrets the user granted into env vars for the kaggle package (never printed)."""
    if importlib.util.find_spec("google") is None or importlib.util.find_spec("google.colab") is None:
        return
    try:
        from google.colab import userdata
    except ImportError:
        return
    for name in _CREDENTIAL_NAMES:
        with contextlib.suppress(Exception):  # not defined, or the notebook was not granted access
            if not os.environ.get(name) and (value := userdata.get(name)):
                os.environ[name] = value


def kaggle_credentials_source() -> str | None:
    """Where Kaggle credentials were found (for messages), or None."""
    _colab_secrets_to_env()
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "the KAGGLE_API_TOKEN environment variable"
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "the KAGGLE_USERNAME/KAGGLE_KEY environment variables"
    config_dir = _kaggle_json_path().parent
    found = (config_dir / name for name in ("kaggle.json", "access_token", "credentials.json"))
    return next((str(path) for path in found if path.is_file()), None)


def _kaggle_secrets() -> list[str]:
    secrets = [os.environ.get(name, "") for name in ("KAGGLE_KEY", "KAGGLE_API_TOKEN")]
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no kaggle.json, or not one
        secrets.append(str(json.loads(_kaggle_json_path().read_text(encoding="utf-8")).get("key", "")))
    return [secret for secret in secrets if len(secret) >= 4]


def _redact(text: str) -> str:
    """``text`` with every Kaggle key this machine has (environment, kaggle.json) replaced by ``***``."""
    for secret in _kaggle_secrets():
        text = text.replace(secret, "***")
    return text


def _short(error: BaseException, limit: int = 100) -> str:
    text = _redact(f"{type(error).__name__}: {error}".splitlines()[0])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kaggle_json_path() -> Path:
    return Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle") / "kaggle.json"


def _add_credentials(lead: str) -> str:
    return (
        f"{lead}: create a token at {KAGGLE_TOKEN_PAGE} (API -> Create New Token) and save the kaggle.json "
        f"it gives as {_kaggle_json_path()} (chmod 600), or export KAGGLE_USERNAME and KAGGLE_KEY (or "
        "KAGGLE_API_TOKEN); on Colab add them as notebook secrets (key icon)"
    )


def _http_status(error: BaseException) -> int | None:
    """The HTTP status in requests' ``HTTPError.response`` or ``ApiException.status`` (kaggle < 1.7)."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    status = getattr(error, "status", None) if status is None else status
    return status if isinstance(status, int) else None


def _network_failure(error: BaseException) -> BaseException | None:
    """The error (or one it was raised from) that says the network failed: DNS, refused, reset, timed out."""
    kinds: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, socket.gaierror)
    with contextlib.suppress(ImportError):
        import requests

        kinds += (requests.ConnectionError, requests.Timeout)
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kinds):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def explain_kaggle_error(error: BaseException, credentials: str | None) -> str:
    """One sentence for a failed Kaggle download: what happened and what to do; never holds a key.

    ``credentials``: where the credentials used were found (``kaggle_credentials_source``), or None."""
    dataset = config.KAGGLE_DATASET
    network = _network_failure(error)
    if network is not None:
        return (
            f"no connection to Kaggle ({_short(network, 80)}): check that this machine is online (Wi-Fi, "
            "proxy, firewall) and try again, or use a copy you already have: --zip PATH/TO/archive.zip, or "
            "--data-dir (data_dir in the notebooks) pointing at a folder that holds train/ and test/"
        )
    if type(error).__name__ == "UnauthenticatedError":  # kagglehub, when a download needs a login
        return _add_credentials("Kaggle asked for a login and no Kaggle credentials were found")
    status = _http_status(error)
    if status == 401:
        if credentials is None:
            return _add_credentials("Kaggle asked for a login (HTTP 401 Unauthorized) and no Kaggle "
                                    "credentials were found")
        return (
            f"Kaggle rejected the credentials in {credentials} (HTTP 401 Unauthorized): the username or key "
            f"is wrong, or the token expired or was revoked; create a new token at {KAGGLE_TOKEN_PAGE} "
            f"(API -> Create New Token) and replace the one in {credentials}"
        )
    if status == 403:
        if credentials is None:
            return _add_credentials(
                f"Kaggle refused anonymous access to {dataset} (HTTP 403 Forbidden): sign in at {KAGGLE_URL} "
                "and accept the dataset's rules there, then give this machine that account's credentials"
            )
        return (
            f"Kaggle refused the account in {credentials} access to {dataset} (HTTP 403 Forbidden): sign in "
            f"at {KAGGLE_URL} as that account, accept the dataset's rules or terms if the page asks you to, "
            "and try again"
        )
    if status == 404:
        return (
            f"Kaggle has no dataset {dataset} (HTTP 404 Not Found): check the slug (config.KAGGLE_DATASET) "
            f"by opening {KAGGLE_URL} in a browser; if the dataset was renamed, removed or made private, "
            "download a copy by hand and use --zip, or point --data-dir at a folder that holds one"
        )
    if status == 429:
        return "Kaggle is limiting requests (HTTP 429 Too Many Requests): wait a few minutes and try again"
    if status is None:
        return _short(error)
    what = f"Kaggle's server failed (HTTP {status})" if status >= 500 else (
        f"Kaggle answered HTTP {status} ({_short(error, 80)})")
    return f"{what}: try again later, or use --zip with a copy downloaded by hand"


def _download_with_kagglehub(data_dir: Path) -> None:
    import kagglehub

    try:
        folder = kagglehub.dataset_download(config.KAGGLE_DATASET)
    except Exception as error:  # requests' errors, kagglehub's KaggleApiHTTPError and its own
        raise KaggleUnavailable(explain_kaggle_error(error, kaggle_credentials_source())) from None
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
                raise KaggleUnavailable(_add_credentials("no Kaggle credentials found")) from None
            raise KaggleUnavailable(
                f"the credentials in {where} were not accepted ({_short(error)}): a kaggle.json holds "
                f'{{"username": ..., "key": ...}}; create a new token at {KAGGLE_TOKEN_PAGE} (API -> Create '
                f"New Token) and replace {where}"
            ) from None
    download_dir = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.download-", dir=data_dir.parent))
    try:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                api.dataset_download_files(config.KAGGLE_DATASET, path=str(download_dir), quiet=True,
                                           unzip=False)
        except (Exception, SystemExit) as error:
            raise KaggleUnavailable(explain_kaggle_error(error, where)) from None
        zips = sorted(download_dir.glob("*.zip"))
        if not zips:
            raise KaggleUnavailable(f"the download gave no zip file in {download_dir}")
        safe_extract_zip(zips[0], data_dir)
    finally:
        shutil.rmtree(download_dir, ignore_errors=True)


def download_from_kaggle(data_dir: str | os.PathLike, *, quiet: bool = False) -> Path:
    """Download the Kaggle dataset into ``data_dir``; else KaggleUnavailable: a line per cause, who met it."""
    data_dir = Path(data_dir)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    failures: dict[str, list[str]] = {}  # explanation -> the downloaders that met it
    attempts = (("kagglehub", "kagglehub", _download_with_kagglehub),
                ("kaggle", "kaggle package", _download_with_kaggle_package))
    for name, label, attempt in attempts:
        if importlib.util.find_spec(name) is None:
            failures.setdefault(f"not installed (pip install {name})", []).append(label)
            continue
        if not quiet:
            print(f"trying to download {config.KAGGLE_DATASET} with {name} ...", flush=True)
        try:
            attempt(data_dir)
            return data_dir
        except KaggleUnavailable as error:
            failures.setdefault(_redact(str(error)), []).append(label)
    causes = (f"  - {' and '.join(labels)}: {explanation}" for explanation, labels in failures.items())
    summary = f"Could not download the Kaggle dataset {config.KAGGLE_DATASET}:\n" + "\n".join(causes)
    raise KaggleUnavailable(summary, how_to_get_real_data(data_dir))


def synthetic_banner(data_dir: str | os.PathLike, reason: str, width: int = 96) -> str:
    """A multi-line, ``!``-framed warning that the data is synthetic, why, and how to get the real data."""
    paragraphs = ["USING A SYNTHETIC DATASET: drawn shapes, NOT the Kaggle muffin/chihuahua photos.",
                  "Accuracies measured on it say nothing about real images.", f"Data folder: {data_dir}", "",
                  *reason.splitlines(), "", *how_to_get_real_data(data_dir).splitlines()]
    lines = []
    for paragraph in paragraphs:
        indent = " " * (len(paragraph) - len(paragraph.lstrip()))
        lines += textwrap.wrap(paragraph.lstrip(), width - 4, initial_indent=indent, break_long_words=False,
                               subsequent_indent=indent + "   ", break_on_hyphens=False) or [""]
    width = max(width, max(len(line) for line in lines) + 4)  # a long path or URL stays whole
    frame = "!" * width
    return "\n".join([frame, *(f"! {line.ljust(width - 4)} !" for line in lines), frame])


def _make_synthetic(data_dir: Path, reason: str, quiet: bool) -> FetchResult:
    if not (is_complete(data_dir) and is_synthetic(data_dir)):
        make_synthetic_dataset(data_dir)
    banner = synthetic_banner(data_dir, reason)
    if quiet:
        one_line = " ".join(line.strip() for line in reason.splitlines())
        log.warning("using the SYNTHETIC dataset in %s (%s)", data_dir, one_line)
    else:
        print(banner, flush=True)
    return FetchResult(data_dir, "synthetic", True, banner)


def _real_data(data_dir: Path, source: str, message: str, quiet: bool) -> FetchResult:
    if not quiet:
        print(message)
    return FetchResult(data_dir, source, False, message)


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
        return _real_data(data_dir, "existing", f"{data_dir} already holds the complete dataset; nothing to "
                          "download", quiet)
    if complete and synthetic and source == "auto":
        reason = "It was made earlier because the Kaggle download was not possible."
        return _make_synthetic(data_dir, reason, quiet)

    try:
        download_from_kaggle(data_dir, quiet=quiet)
    except KaggleUnavailable as error:
        if source == "kaggle":
            raise
        return _make_synthetic(data_dir, error.summary, quiet)
    return _real_data(data_dir, "kaggle", f"downloaded {config.KAGGLE_DATASET} into {data_dir}", quiet)


def fetch_from_zip(zip_path: str | os.PathLike, data_dir: str | os.PathLike, *, quiet=False) -> FetchResult:
    """Extract a hand-downloaded Kaggle archive into ``data_dir`` (safely, atomically)."""
    data_dir = Path(data_dir).expanduser().resolve()
    safe_extract_zip(Path(zip_path).expanduser(), data_dir)
    return _real_data(data_dir, "zip", f"{data_dir} holds the dataset from {zip_path}", quiet)


def add_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=config.DEFAULT_DATA_DIR,
                        help=f"where the dataset goes (default: {config.DEFAULT_DATA_DIR}; "
                        "env MUFFIN_DATA_DIR)")
    parser.add_argument("--source", choices=SOURCES, default="auto",
                        help="auto: keep a complete data dir, else Kaggle, else synthetic (default: auto)")
    parser.add_argument("--zip", type=Path, metavar="PATH",
                        help=f"extract an archive you downloaded by hand from {KAGGLE_URL} "
                        "(default: none: use --source)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")


def fetch_command(args: argparse.Namespace) -> int:
    if args.zip is not None:
        result = fetch_from_zip(args.zip, args.data_dir)
    else:
        result = fetch_dataset(args.data_dir, args.source)
    if args.json:
        print(json.dumps({"data_dir": str(result.data_dir), "source": result.source_used,
                          "synthetic": result.synthetic}))
    return 0
