"""extract + fetch: safe zips, atomic installs, Kaggle paths up to the network, the synthetic fallback."""

from __future__ import annotations

import contextlib
import io
import json
import stat
import zipfile
from pathlib import Path

import pytest
import requests

from muffin_lib import cli, config
from muffin_lib.data import fetch
from muffin_lib.data.extract import is_complete, safe_extract_zip
from muffin_lib.data.synthetic import is_synthetic, make_synthetic_dataset
from muffin_lib.errors import MuffinError

JPEG = None


def _jpeg_bytes() -> bytes:
    global JPEG
    if JPEG is None:
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (16, 12), (180, 120, 60)).save(buffer, "JPEG")
        JPEG = buffer.getvalue()
    return JPEG


LAYOUT = [f"{split}/{name}/img_{i}.jpg" for split in config.SPLITS for name in config.CLASSES
          for i in range(2)]


def _make_zip(path: Path, prefix: str = "", extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in LAYOUT:
            archive.writestr(prefix + name, _jpeg_bytes())
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("prefix", ["", "muffin-vs-chihuahua/"])
def test_zip_is_extracted_into_the_kaggle_layout_and_rerun_is_a_noop(tmp_path, prefix):
    archive = _make_zip(tmp_path / "archive.zip", prefix, extra={"__MACOSX/._junk": b"x"})
    dest = tmp_path / "data"
    safe_extract_zip(archive, dest)
    assert is_complete(dest)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.jpg")) == sorted(LAYOUT)
    assert not (dest / "__MACOSX").exists() and _leftovers(tmp_path) == []

    sentinel = dest / "train" / "muffin" / "mine.txt"
    sentinel.write_text("kept")
    safe_extract_zip(archive, dest)  # complete already: nothing is touched
    assert sentinel.read_text() == "kept"


def test_zip_with_parent_path_member_is_refused_by_name(tmp_path):
    archive = _make_zip(tmp_path / "evil.zip", extra={"../evil.jpg": b"x", "train/../../evil2.jpg": b"x"})
    with pytest.raises(MuffinError, match=r"\.\./evil\.jpg") as info:
        safe_extract_zip(archive, tmp_path / "data")
    assert "evil2.jpg" in str(info.value)
    assert not (tmp_path / "data").exists() and not (tmp_path / "evil.jpg").exists()
    assert _leftovers(tmp_path) == []


def test_zip_with_absolute_path_and_symlink_is_refused(tmp_path):
    archive = _make_zip(tmp_path / "evil.zip", extra={"/tmp/absolute_evil.jpg": b"x"})
    with zipfile.ZipFile(archive, "a") as zf:
        link = zipfile.ZipInfo("train/muffin/link.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(MuffinError) as info:
        safe_extract_zip(archive, tmp_path / "data")
    message = str(info.value)
    assert "absolute_evil.jpg (absolute path)" in message and "link.jpg (symlink)" in message
    assert not (tmp_path / "data").exists() and _leftovers(tmp_path) == []


def test_truncated_zip_gives_clear_error_and_leaves_nothing(tmp_path):
    archive = _make_zip(tmp_path / "full.zip")
    cut = tmp_path / "cut.zip"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(MuffinError, match="not a complete zip archive.*download it again"):
        safe_extract_zip(cut, tmp_path / "data")
    assert not (tmp_path / "data").exists() and _leftovers(tmp_path) == []


def test_zip_without_train_folder_is_refused(tmp_path):
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cats/a.jpg", _jpeg_bytes())
    with pytest.raises(MuffinError, match="no train/ folder"):
        safe_extract_zip(archive, tmp_path / "data")
    assert _leftovers(tmp_path) == []


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """No Kaggle credentials anywhere: env cleared and HOME pointed at an empty folder."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def offline(monkeypatch):
    """kagglehub as it behaves without a network."""
    import kagglehub

    def refuse(*args, **kwargs):
        raise requests.ConnectionError("Failed to resolve 'www.kaggle.com'")

    monkeypatch.setattr(kagglehub, "dataset_download", refuse)


def test_offline_without_credentials_gives_one_actionable_message(tmp_path, no_credentials, offline, capsys):
    with pytest.raises(fetch.KaggleUnavailable) as info:
        fetch.fetch_dataset(tmp_path / "data", "kaggle", quiet=True)
    message = str(info.value)
    assert "kagglehub: no connection" in message and "no Kaggle credentials found" in message
    assert "KAGGLE_USERNAME" in message and "--zip" in message and fetch.KAGGLE_URL in message
    captured = capsys.readouterr()
    assert "Authentication required" not in captured.out + captured.err  # the kaggle banner stays hidden
    assert not (tmp_path / "data").exists()


def test_kaggle_package_failure_with_bad_credentials_is_caught(
    tmp_path, no_credentials, offline, monkeypatch, capsys
):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "not-a-real-key")
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi

    def fail(self, *args, **kwargs):
        raise SystemExit(1)

    monkeypatch.setattr(KaggleApi, "authenticate", fail)
    with pytest.raises(fetch.KaggleUnavailable, match="were not accepted"):
        fetch.fetch_dataset(tmp_path / "data", "kaggle", quiet=True)
    assert "not-a-real-key" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- each Kaggle failure, explained
# Every HTTP request kagglehub and the kaggle package make goes through requests' HTTPAdapter.send: the
# stand-in answers there, so the libraries' own code (kagglehub's KaggleApiHTTPError wrapping, the kaggle
# package's HTTPError) runs as it does against www.kaggle.com.

STATUS_REASONS = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}
SECRET = "not-a-real-key-1234"


@pytest.fixture
def kaggle_answers(monkeypatch):
    """``kaggle_answers(401)``: every Kaggle request gets that status; ``kaggle_answers(error)`` raises it."""
    from requests.adapters import HTTPAdapter

    seen = []

    def answer_with(answer):
        def send(self, request, **kwargs):
            seen.append(request.url)
            if isinstance(answer, BaseException):
                raise answer
            response = requests.Response()
            response.status_code, response.reason, response.url, response.request = (
                answer, STATUS_REASONS[answer], request.url, request)
            response.headers["Content-Type"] = "application/json"
            response._content = json.dumps({"code": answer, "message": STATUS_REASONS[answer]}).encode()
            return response

        monkeypatch.setattr(HTTPAdapter, "send", send)
        return seen

    return answer_with


@pytest.fixture
def env_credentials(no_credentials, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    return "the KAGGLE_USERNAME/KAGGLE_KEY environment variables"


def _cli_fetch_kaggle(data_dir, capsys) -> list[str]:
    """``python -m muffin_lib fetch --source kaggle``: exit code 2, and the lines of its error (stderr)."""
    assert cli.main(["fetch", "--source", "kaggle", "--data-dir", str(data_dir)]) == 2
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err and "Traceback" not in captured.err
    lines = captured.err.splitlines()
    assert lines[0] == f"error: Could not download the Kaggle dataset {config.KAGGLE_DATASET}:"
    assert "To get the real photos, either" in lines
    assert not data_dir.exists()
    return [line for line in lines if line.startswith("  - ")]


TOKEN_FIX = (f"create a token at {fetch.KAGGLE_TOKEN_PAGE} (API -> Create New Token) and save the "
             "kaggle.json it gives as {json} (chmod 600), or export KAGGLE_USERNAME and KAGGLE_KEY (or "
             "KAGGLE_API_TOKEN); on Colab add them as notebook secrets (key icon)")


def test_no_credentials_says_where_to_put_them(tmp_path, no_credentials, kaggle_answers, capsys):
    kaggle_answers(401)  # Kaggle wants a login: kagglehub's anonymous request is refused
    fix = TOKEN_FIX.format(json=no_credentials / ".kaggle" / "kaggle.json")
    assert _cli_fetch_kaggle(tmp_path / "data", capsys) == [
        "  - kagglehub: Kaggle asked for a login (HTTP 401 Unauthorized) and no Kaggle credentials were "
        f"found: {fix}",
        f"  - kaggle package: no Kaggle credentials found: {fix}",
    ]


def test_wrong_credentials_401_say_which_ones_and_how_to_renew_them(
    tmp_path, env_credentials, kaggle_answers, capsys
):
    seen = kaggle_answers(401)
    assert _cli_fetch_kaggle(tmp_path / "data", capsys) == [
        f"  - kagglehub and kaggle package: Kaggle rejected the credentials in {env_credentials} (HTTP 401 "
        "Unauthorized): the username or key is wrong, or the token expired or was revoked; create a new "
        f"token at {fetch.KAGGLE_TOKEN_PAGE} (API -> Create New Token) and replace the one in "
        f"{env_credentials}"
    ]
    assert len(seen) == 2 and all(url.startswith("https://api.kaggle.com/") for url in seen)  # one try each


def test_wrong_kaggle_json_is_named_by_its_path(tmp_path, no_credentials, kaggle_answers, capsys,
                                                 monkeypatch):
    kaggle_json = tmp_path / "kaggle-config" / "kaggle.json"
    kaggle_json.parent.mkdir()
    kaggle_json.write_text(json.dumps({"username": "someone", "key": SECRET}))
    kaggle_json.chmod(0o600)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(kaggle_json.parent))
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
    # The kaggle package reads KAGGLE_CONFIG_DIR when it is imported (here: by an earlier test).
    monkeypatch.setattr(KaggleApi, "config_dir", str(kaggle_json.parent))
    monkeypatch.setattr(KaggleApi, "config", str(kaggle_json))
    kaggle_answers(401)
    [line] = _cli_fetch_kaggle(tmp_path / "data", capsys)
    assert line.startswith("  - kagglehub and kaggle package: Kaggle rejected the credentials in "
                           f"{kaggle_json} (HTTP 401")


def test_forbidden_403_says_accept_the_rules_on_the_dataset_page(
    tmp_path, env_credentials, kaggle_answers, capsys
):
    kaggle_answers(403)
    assert _cli_fetch_kaggle(tmp_path / "data", capsys) == [
        f"  - kagglehub and kaggle package: Kaggle refused the account in {env_credentials} access to "
        f"{config.KAGGLE_DATASET} (HTTP 403 Forbidden): sign in at {fetch.KAGGLE_URL} as that account, "
        "accept the dataset's rules or terms if the page asks you to, and try again"
    ]


def test_forbidden_403_without_credentials_asks_for_an_account(
    tmp_path, no_credentials, kaggle_answers, capsys
):
    kaggle_answers(403)
    first, second = _cli_fetch_kaggle(tmp_path / "data", capsys)
    assert first.startswith(f"  - kagglehub: Kaggle refused anonymous access to {config.KAGGLE_DATASET} "
                            f"(HTTP 403 Forbidden): sign in at {fetch.KAGGLE_URL} and accept the dataset's "
                            "rules there")
    assert second.startswith("  - kaggle package: no Kaggle credentials found: create a token at")


def test_not_found_404_says_check_the_slug(tmp_path, env_credentials, kaggle_answers, capsys):
    kaggle_answers(404)
    assert _cli_fetch_kaggle(tmp_path / "data", capsys) == [
        f"  - kagglehub and kaggle package: Kaggle has no dataset {config.KAGGLE_DATASET} (HTTP 404 Not "
        f"Found): check the slug (config.KAGGLE_DATASET) by opening {fetch.KAGGLE_URL} in a browser; if the "
        "dataset was renamed, removed or made private, download a copy by hand and use --zip, or point "
        "--data-dir at a folder that holds one"
    ]


@pytest.mark.parametrize("error", [
    requests.ConnectionError("HTTPSConnectionPool(host='api.kaggle.com', port=443): Max retries exceeded "
                             "with url: /v1/datasets.DatasetApiService/GetDataset (Caused by "
                             "NameResolutionError(\"Failed to resolve 'api.kaggle.com' ([Errno -3] Temporary "
                             "failure in name resolution)\"))"),
    requests.ConnectTimeout("Connection to api.kaggle.com timed out"),
    requests.ReadTimeout("Read timed out"),
], ids=["dns", "connect-timeout", "read-timeout"])
def test_no_network_says_check_it_or_use_a_local_copy(tmp_path, env_credentials, kaggle_answers, capsys,
                                                       error):
    kaggle_answers(error)
    [line] = _cli_fetch_kaggle(tmp_path / "data", capsys)
    assert line.startswith(f"  - kagglehub and kaggle package: no connection to Kaggle "
                           f"({type(error).__name__}: ")
    assert line.endswith(
        "): check that this machine is online (Wi-Fi, proxy, firewall) and try again, or use a copy you "
        "already have: --zip PATH/TO/archive.zip, or --data-dir (data_dir in the notebooks) pointing at a "
        "folder that holds train/ and test/"
    )


def test_notebook_00_falls_back_to_synthetic_and_shows_why(tmp_path, env_credentials, kaggle_answers, capsys):
    """Notebook 00 calls fetch_dataset(data_dir, source="auto"): the synthetic banner it prints says why."""
    kaggle_answers(403)
    result = fetch.fetch_dataset(tmp_path / "data", "auto")
    out = capsys.readouterr().out
    assert result.synthetic and is_synthetic(tmp_path / "data") and SECRET not in out
    text = " ".join(line.strip("! ").strip() for line in out.splitlines() if line.startswith("! "))
    assert "USING A SYNTHETIC DATASET" in text
    assert (f"- kagglehub and kaggle package: Kaggle refused the account in {env_credentials} access to "
            f"{config.KAGGLE_DATASET} (HTTP 403 Forbidden): sign in at {fetch.KAGGLE_URL}") in text


def test_a_key_in_an_error_is_never_shown(env_credentials, no_credentials, monkeypatch):
    message = fetch.explain_kaggle_error(RuntimeError(f"bad key {SECRET} for someone"), env_credentials)
    assert SECRET not in message and "***" in message
    monkeypatch.delenv("KAGGLE_KEY")
    (no_credentials / ".kaggle").mkdir()
    kaggle_json = json.dumps({"username": "someone", "key": SECRET})
    (no_credentials / ".kaggle" / "kaggle.json").write_text(kaggle_json)
    message = fetch.explain_kaggle_error(RuntimeError(f"bad key {SECRET}"), str(no_credentials / ".kaggle"))
    assert SECRET not in message and "***" in message


def test_kagglehub_folder_is_copied_into_the_layout(tmp_path, no_credentials, monkeypatch):
    import kagglehub

    download = tmp_path / "kagglehub-cache" / "versions" / "1"
    for name in LAYOUT:
        (download / "muffin-vs-chihuahua" / name).parent.mkdir(parents=True, exist_ok=True)
        (download / "muffin-vs-chihuahua" / name).write_bytes(_jpeg_bytes())
    calls = []
    monkeypatch.setattr(kagglehub, "dataset_download",
                        lambda handle, **kw: calls.append(handle) or str(download))

    result = fetch.fetch_dataset(tmp_path / "data", "auto", quiet=True)
    assert calls == [config.KAGGLE_DATASET]
    assert result.source_used == "kaggle" and not result.synthetic and is_complete(result.data_dir)
    again = fetch.fetch_dataset(tmp_path / "data", "auto", quiet=True)
    assert again.source_used == "existing" and calls == [config.KAGGLE_DATASET]  # no second download


def test_kaggle_package_zip_is_used_when_kagglehub_fails(tmp_path, no_credentials, offline, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi

    def download(self, dataset, path=None, **kwargs):
        assert dataset == config.KAGGLE_DATASET
        _make_zip(Path(path) / "muffin-vs-chihuahua-image-classification.zip")

    monkeypatch.setattr(KaggleApi, "authenticate", lambda self: None)
    monkeypatch.setattr(KaggleApi, "dataset_download_files", download)
    result = fetch.fetch_dataset(tmp_path / "data", "kaggle", quiet=True)
    assert result.source_used == "kaggle" and is_complete(tmp_path / "data")
    assert _leftovers(tmp_path) == []


def test_auto_offline_falls_back_to_synthetic_with_banner_and_is_idempotent(
    tmp_path, no_credentials, offline, capsys
):
    data = tmp_path / "data"
    result = fetch.fetch_dataset(data, "auto")
    out = capsys.readouterr().out
    assert result.synthetic and result.source_used == "synthetic" and is_synthetic(data) and is_complete(data)
    banner = [line for line in out.splitlines() if line.startswith("!")]
    assert len(banner) > 5 and banner[0] == "!" * len(banner[0])
    assert "SYNTHETIC" in out and "--zip" in out and "no connection" in out
    marker = json.loads((data / config.SYNTHETIC_MARKER).read_text())
    assert marker["seed"] == 0 and marker["counts"] == {"train": 240, "test": 60}

    first_mtime = (data / config.SYNTHETIC_MARKER).stat().st_mtime_ns
    again = fetch.fetch_dataset(data, "auto", quiet=True)
    assert again.synthetic and (data / config.SYNTHETIC_MARKER).stat().st_mtime_ns == first_mtime


def test_real_data_replaces_synthetic_but_synthetic_never_replaces_real(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", n_train=4, n_test=4, image_size=16)
    fetch.fetch_from_zip(_make_zip(tmp_path / "a.zip"), data, quiet=True)
    assert not is_synthetic(data) and is_complete(data)
    with pytest.raises(MuffinError, match="holds real data"):
        fetch.fetch_dataset(data, "synthetic", quiet=True)


def test_cli_fetch_auto_offline_makes_synthetic(tmp_path, no_credentials, offline, capsys, monkeypatch):
    monkeypatch.setenv("MUFFIN_PROGRESS", "off")
    assert cli.main(["fetch", "--source", "auto", "--data-dir", str(tmp_path / "data"), "--json"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["synthetic"] is True and last["source"] == "synthetic"


def test_cli_fetch_zip_refuses_evil_archive(tmp_path, capsys):
    archive = _make_zip(tmp_path / "evil.zip", extra={"../evil.jpg": b"x"})
    assert cli.main(["fetch", "--zip", str(archive), "--data-dir", str(tmp_path / "data")]) == 2
    assert "../evil.jpg" in capsys.readouterr().err
    archive = _make_zip(tmp_path / "ok.zip")
    assert cli.main(["fetch", "--zip", str(archive), "--data-dir", str(tmp_path / "d")]) == 0
    assert is_complete(tmp_path / "d")


def test_synthetic_dataset_is_seeded_balanced_and_marked(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", n_train=10, n_test=5, image_size=24, seed=7)
    b = make_synthetic_dataset(tmp_path / "b", n_train=10, n_test=5, image_size=24, seed=7)
    c = make_synthetic_dataset(tmp_path / "c", n_train=10, n_test=5, image_size=24, seed=8)
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.jpg"))
    assert len(files) == 15 and sum("train/muffin/" in f for f in files) == 5
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)
    assert is_synthetic(a) and json.loads((a / config.SYNTHETIC_MARKER).read_text())["seed"] == 7
    with pytest.raises(MuffinError, match="not empty"):
        make_synthetic_dataset(a)
