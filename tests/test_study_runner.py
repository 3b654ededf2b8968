"""The papermill runner on tiny throwaway notebooks: injection, order, --only, failures, summary."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from muffin_lib import cli
from muffin_lib.errors import MuffinError
from muffin_lib.study.runner import find_notebooks, parse_value, run_series

# Each tiny notebook records what it saw: its parameters, the kernel's environment and its turn.
BODY = """
import json, os, pathlib
results = pathlib.Path(work_dir) / "results"
results.mkdir(parents=True, exist_ok=True)
with open(pathlib.Path(work_dir) / "order.log", "a") as log:
    log.write(NAME + "\\n")
seen = {k: v for k, v in globals().items() if k in PARAMS}
(results / (NAME + ".json")).write_text(json.dumps({
    "seen": seen,
    "progress_env": os.environ.get("MUFFIN_PROGRESS"),
    "cwd": os.getcwd(),
    "models": {NAME + "_model": {"test_zero_one_loss": 0.25, "test_ci": [0.2, 0.3]}},
    "findings": [NAME + " found " + str(len(seen)) + " parameters"],
}))
"""


def write_notebook(folder: Path, name: str, extra_params: str = "", fail: bool = False) -> Path:
    params = 'data_dir = "../data"\nwork_dir = "../work"\nprofile = "full"\n' + extra_params
    names = [line.split("=")[0].strip() for line in params.splitlines() if "=" in line]
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    parameters = nbformat.v4.new_code_cell(params)
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# {name}"),
        parameters,
        nbformat.v4.new_code_cell(f"NAME = {name!r}\nPARAMS = {names!r}" + BODY),
    ]
    if fail:
        breaks = '# the step that breaks\nraise ValueError("boom in " + NAME)'
        nb.cells.append(nbformat.v4.new_code_cell(breaks))
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture
def series(tmp_path: Path) -> Path:
    folder = tmp_path / "notebooks"
    folder.mkdir()
    write_notebook(folder, "00_first")
    write_notebook(folder, "01_second", "epochs = 3\nlr = 0.1\n")
    write_notebook(folder, "02_third")
    return folder


def order(work_dir: Path) -> list[str]:
    return (work_dir / "order.log").read_text().split()


def test_runs_in_order_injects_parameters_and_writes_summary(series: Path, tmp_path: Path):
    work_dir = tmp_path / "work"
    (tmp_path / "data").mkdir()
    summary = run_series(
        profile="smoke",
        data_dir=tmp_path / "data",
        work_dir=work_dir,
        parameters={"epochs": 5},
        notebooks_dir=series,
        progress=False,
    )
    assert order(work_dir) == ["00_first", "01_second", "02_third"]
    seen = {name: json.loads((work_dir / "results" / f"{name}.json").read_text()) for name in order(work_dir)}
    for result in seen.values():
        assert result["seen"]["data_dir"] == str((tmp_path / "data").resolve())
        assert result["seen"]["work_dir"] == str(work_dir.resolve())
        assert result["seen"]["profile"] == "smoke"
        assert result["progress_env"] == "text"
        assert Path(result["cwd"]) == series.resolve()
    # -p goes only where the parameter exists; other parameters keep their defaults
    assert seen["01_second"]["seen"]["epochs"] == 5
    assert seen["01_second"]["seen"]["lr"] == 0.1
    assert "epochs" not in seen["00_first"]["seen"]
    for name in order(work_dir):
        executed = nbformat.read(work_dir / "executed" / f"{name}.ipynb", as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)

    assert [r["status"] for r in summary["notebooks"].values()] == ["ok", "ok", "ok"]
    on_disk = json.loads((work_dir / "summary.json").read_text())
    assert on_disk["notebooks"].keys() == summary["notebooks"].keys()
    assert on_disk["models"]["01_second_model"]["test_zero_one_loss"] == 0.25
    markdown = (work_dir / "summary.md").read_text()
    assert "| 01_second | ok |" in markdown
    assert "| 02_third_model |  | 0.250 [0.200, 0.300] |" in markdown  # the whole-test-split column
    assert "01_second found 5 parameters" in markdown


def test_failure_names_notebook_and_cell_and_stops(series: Path, tmp_path: Path):
    write_notebook(series, "01_second", fail=True)
    work_dir = tmp_path / "work"
    (tmp_path / "data").mkdir()
    with pytest.raises(MuffinError) as raised:
        run_series(data_dir=tmp_path / "data", work_dir=work_dir, notebooks_dir=series, progress=False)
    message = str(raised.value)
    assert "01_second failed" in message
    # In [4]: the parameters cell, the injected parameters, the body, then the failing cell
    assert "In [4]" in message and "the step that breaks" in message
    assert "ValueError: boom in 01_second" in message
    assert str(work_dir.resolve() / "executed" / "01_second.ipynb") in message
    assert order(work_dir) == ["00_first", "01_second"]  # 02 never started

    summary = json.loads((work_dir / "summary.json").read_text())
    statuses = {name: record["status"] for name, record in summary["notebooks"].items()}
    assert statuses == {"00_first": "ok", "01_second": "failed",
                        "02_third": "not run (an earlier notebook failed)"}
    assert "## 01_second failed" in (work_dir / "summary.md").read_text()


def test_only_reruns_some_and_keeps_the_rest_of_the_summary(series: Path, tmp_path: Path):
    work_dir = tmp_path / "work"
    (tmp_path / "d").mkdir()
    run_series(data_dir=tmp_path / "d", work_dir=work_dir, notebooks_dir=series, only="00,02", progress=False)
    assert order(work_dir) == ["00_first", "02_third"]
    summary = run_series(data_dir=tmp_path / "d", work_dir=work_dir, notebooks_dir=series, only=["1"],
                         progress=False)
    assert order(work_dir) == ["00_first", "02_third", "01_second"]
    # the earlier records and results files survive a partial re-run
    assert set(summary["notebooks"]) == {"00_first", "01_second", "02_third"}
    assert set(summary["results"]) == {"00_first", "01_second", "02_third"}


def test_bad_requests_fail_before_running_anything(series: Path, tmp_path: Path):
    work_dir = tmp_path / "work"
    with pytest.raises(MuffinError, match="-p nope: no notebook"):
        run_series(work_dir=work_dir, notebooks_dir=series, parameters={"nope": 1}, progress=False)
    with pytest.raises(MuffinError,
                       match="--only '07' matches no notebook; the series is: 00_first, 01_second"):
        find_notebooks(series, "07")
    with pytest.raises(MuffinError, match="no notebooks matching"):
        find_notebooks(tmp_path / "empty", None)
    with pytest.raises(MuffinError, match="profile must be one of"):
        run_series(profile="huge", work_dir=work_dir, notebooks_dir=series, progress=False)
    assert not (work_dir / "order.log").exists()


def test_cli_runs_and_reports_failures(series: Path, tmp_path: Path, capsys):
    for path in series.glob("0[12]_*.ipynb"):
        path.unlink()
    (tmp_path / "d").mkdir()
    args = ["run", "--notebooks-dir", str(series), "--work-dir", str(tmp_path / "w"), "--data-dir",
            str(tmp_path / "d")]
    assert cli.main([*args, "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "[1/1] 00_first.ipynb" in out and "  00_first  ok " in out
    assert "  00_first_model  " in out and str((tmp_path / "w").resolve() / "summary.md") in out

    write_notebook(series, "00_first", fail=True)
    assert cli.main(args) == 2
    assert "error: 00_first failed in cell In [4]" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "value"),
    [("5", 5), ("1e-3", 0.001), ("True", True), ("[64, 128]", [64, 128]),
     ("[simple_cnn, deeper_cnn]", ["simple_cnn", "deeper_cnn"]), ("rgb", "rgb"), ("/tmp/x", "/tmp/x")],
)
def test_parse_value(text, value):
    assert parse_value(text) == value


def test_synthetic_data_is_said_loudly(series: Path, tmp_path: Path, capsys):
    from muffin_lib.config import SYNTHETIC_MARKER

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / SYNTHETIC_MARKER).write_text("{}")
    work_dir = tmp_path / "work"
    summary = run_series(data_dir=data_dir, work_dir=work_dir, notebooks_dir=series, only="00")
    assert summary["synthetic"] is True
    assert "SYNTHETIC" in capsys.readouterr().out
    assert "**⚠️ SYNTHETIC DATA**" in (work_dir / "summary.md").read_text()


@pytest.mark.slow  # runs notebook 00 on the dev data twice: 20 s
@pytest.mark.parametrize(("cuda", "expected"), [(False, "quick"), (True, "full")])
def test_auto_profile_is_chosen_by_hardware_on_real_data_and_smoke_on_the_synthetic_fallback(
    series: Path, tmp_path: Path, synthetic_data_dir: Path, monkeypatch, cuda: bool, expected: str
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a test GPU")
    real = tmp_path / "real"
    (real / "train").mkdir(parents=True)  # no SYNTHETIC marker: taken for real photos
    summary = run_series(data_dir=real, work_dir=tmp_path / "w1", notebooks_dir=series, progress=False)
    result = json.loads((tmp_path / "w1" / "results" / "00_first.json").read_text())
    assert result["seen"]["profile"] == expected
    assert summary["profile"] == f"auto ({expected})"

    summary = run_series(data_dir=synthetic_data_dir, work_dir=tmp_path / "w2", notebooks_dir=series,
                         progress=False)
    for name in ("00_first", "01_second", "02_third"):
        result = json.loads((tmp_path / "w2" / "results" / f"{name}.json").read_text())
        assert result["seen"]["profile"] == "smoke"
    assert summary["profile"] == "auto (smoke)" and summary["synthetic"] is True


def test_summary_table_puts_the_twin_free_test_error_first():
    from muffin_lib.study.summary import format_summary

    summary = {
        "synthetic": False, "data_dir": "d", "profile": "full", "work_dir": "w", "environment": {},
        "notebooks": {}, "findings": [],
        "models": {"deeper_cnn": {"test_twin_free": 0.05, "test_twin_free_ci": [0.04, 0.07],
                                  "test_zero_one_loss": 0.045, "test_ci": [0.033, 0.06],
                                  "cv_risk": 0.08, "cv_ci": [0.06, 0.1], "val_zero_one_loss": 0.09,
                                  "val_ci": [0.07, 0.11]}},
    }
    text = format_summary(summary)
    assert "| model | test, twin-free [95% CI] | test, whole split [95% CI] | CV risk [95% CI] |" in text
    assert ("| deeper_cnn | 0.050 [0.040, 0.070] | 0.045 [0.033, 0.060] | 0.080 [0.060, 0.100] "
            "| 0.090 [0.070, 0.110] |") in text


def test_summary_says_which_precision_trained_each_model_and_why():
    from muffin_lib.study.summary import format_summary

    reason = "bf16: probe 1.73x bf16 vs fp32, parity ok; avx512_bf16"
    summary = {
        "synthetic": False, "data_dir": "d", "profile": "quick", "work_dir": "w", "environment": {},
        "notebooks": {}, "findings": [],
        "models": {"deeper_cnn": {"val_zero_one_loss": 0.09, "val_ci": [0.07, 0.11], "precision": reason},
                   "simple_cnn": {"val_zero_one_loss": 0.12, "val_ci": [0.1, 0.14],
                                  "precision": "fp32: amp off"}},
    }
    text = format_summary(summary)
    assert f"deeper_cnn {reason}; simple_cnn fp32: amp off." in text


def test_a_mistyped_data_dir_stops_before_any_notebook_and_says_what_train_says(series: Path,
                                                                                tmp_path: Path, capsys):
    from muffin_lib.data.scan import scan_dataset

    work_dir, typo = tmp_path / "work", tmp_path / "muffn-data"
    with pytest.raises(MuffinError) as raised:
        run_series(data_dir=typo, work_dir=work_dir, notebooks_dir=series, progress=False)
    message = str(raised.value)
    assert message.startswith(f"data folder {typo.resolve()} does not exist. "
                              "Fix the path given to --data-dir")
    assert "leave --data-dir out to use the default location" in message
    assert "00_setup downloads the Kaggle data or makes a synthetic set" in message
    with pytest.raises(MuffinError) as from_train:  # what `train` and the other data commands say
        scan_dataset(typo, work_dir)
    assert str(from_train.value).startswith(f"data folder {typo.resolve()} does not exist.")

    args = ["run", "--notebooks-dir", str(series), "--work-dir", str(work_dir), "--data-dir", str(typo)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data folder") and len(err.strip().splitlines()) == 1
    assert not typo.exists() and not (work_dir / "order.log").exists()
    assert not (work_dir / "executed").exists()


def test_the_default_data_dir_may_be_missing(series: Path, tmp_path: Path, monkeypatch):
    from muffin_lib.study import runner

    monkeypatch.setattr(runner, "DEFAULT_DATA_DIR", tmp_path / "default-data")  # 00_setup fills it
    summary = run_series(work_dir=tmp_path / "work", notebooks_dir=series, only="00", progress=False)
    assert summary["notebooks"]["00_first"]["status"] == "ok"
    assert summary["data_dir"] == str((tmp_path / "default-data").resolve())


def test_run_ends_with_a_short_summary_that_names_summary_md(tmp_path: Path, monkeypatch, capsys):
    from muffin_lib.study import runner
    from muffin_lib.study import summary as summary_module

    numbers = {"test_twin_free": 0.05, "test_twin_free_ci": [0.04, 0.07], "test_zero_one_loss": 0.045,
               "test_ci": [0.033, 0.06], "cv_risk": 0.08, "cv_ci": [0.06, 0.1], "cv_kind": "nested",
               "cv_settings": "64 px, 8 epochs (profile quick: cheaper than the deployed 128 px / 15 epochs)",
               "val_zero_one_loss": 0.09, "val_ci": [0.07, 0.11],
               "precision": "bf16: probe 1.73x bf16 vs fp32"}
    work_dir = tmp_path / "work"
    summary = {
        "synthetic": True, "data_dir": str(tmp_path / "data"), "profile": "auto (quick)",
        "work_dir": str(work_dir),
        "environment": {"summary": "Python 3.12, torch 2.5, 2 CPU cores"}, "results": {},
        "notebooks": {f"{i:02d}_notebook": {"status": "ok", "seconds": 10.0 * i} for i in range(10)},
        "models": {name: dict(numbers) for name in ("simple_cnn", "deeper_cnn", "resnet_like", "transfer",
                                                    "tuned")},
        "findings": [{"notebook": "07_cv_risk", "text": "a finding of some length " * 10} for _ in range(30)],
    }
    assert len(summary_module.format_summary(summary).splitlines()) > 50  # summary.md keeps everything
    monkeypatch.setattr(runner, "run_series", lambda **kwargs: summary)
    assert cli.main(["run", "--work-dir", str(work_dir), "--quiet"]) == 0
    lines = capsys.readouterr().out.strip("\n").splitlines()
    assert len(lines) <= 25 and max(len(line) for line in lines if str(tmp_path) not in line) <= 110
    assert lines[-1].endswith(str(work_dir / "summary.md")) and "30 findings" in lines[-1]
    assert "  09_notebook  ok      90.0 s" in lines and any("SYNTHETIC" in line for line in lines)
    row = "  tuned                 0.050 [0.040, 0.070] 0.045 [0.033, 0.060] 0.080 [0.060, 0.100] 0.090"
    assert row in "\n".join(lines)


def test_only_after_a_failure_leaves_no_stale_not_run_entries(series: Path, tmp_path: Path):
    import re

    write_notebook(series, "02_third", fail=True)
    write_notebook(series, "03_fourth")
    write_notebook(series, "04_fifth")
    write_notebook(series, "05_sixth")  # after the --only range: its stale entry is what the issue saw
    work_dir, data_dir = tmp_path / "work", tmp_path / "data"
    data_dir.mkdir()
    with pytest.raises(MuffinError, match="02_third failed"):
        run_series(data_dir=data_dir, work_dir=work_dir, notebooks_dir=series, progress=False)
    notebooks = json.loads((work_dir / "summary.json").read_text())["notebooks"]
    assert {notebooks[name]["status"] for name in ("03_fourth", "04_fifth", "05_sixth")} == {
        "not run (an earlier notebook failed)"}

    run_series(data_dir=data_dir, work_dir=work_dir, notebooks_dir=series, only="3,4", progress=False)
    markdown = (work_dir / "summary.md").read_text()
    assert "an earlier notebook failed" not in markdown
    assert "| 03_fourth | ok |" in markdown and "| 04_fifth | ok |" in markdown
    for name in ("00_first", "01_second"):
        assert re.search(rf"\| {name} \| ok \(earlier run, \d{{4}}-\d\d-\d\d \d\d:\d\d UTC\) \|",
                         markdown), name
    assert "| 02_third | failed (earlier run) |" in markdown
    assert "## 02_third failed (earlier run)" in markdown
    assert "| 05_sixth | not run yet |" in markdown


def test_records_from_earlier_runs_are_marked_once(tmp_path: Path):
    from muffin_lib.study.summary import write_summary

    work_dir = tmp_path / "work"
    work_dir.mkdir()
    write_summary(work_dir, tmp_path / "data", "smoke", {
        "00_a": {"status": "ok", "seconds": 1.0, "finished_at": "2026-12-04T18:44:53+00:00"},
        "01_b": {"status": "failed", "seconds": 2.0, "error": "01_b failed in cell In [4]"},
        "02_c": {"status": "not run (an earlier notebook failed)"},
    })
    for _ in range(2):  # a second --only run must not mark them again
        summary = write_summary(work_dir, tmp_path / "data", "smoke",
                                {"03_d": {"status": "ok", "seconds": 1.0}})
    statuses = {name: record["status"] for name, record in summary["notebooks"].items()}
    assert statuses == {"00_a": "ok (earlier run, 2026-12-04 18:44 UTC)", "01_b": "failed (earlier run)",
                        "02_c": "not run yet", "03_d": "ok"}


@pytest.mark.parametrize(("parameter", "value", "message"), [
    ("epochs", "abc", "-p epochs: expected a whole number >= 1, got 'abc'"),
    ("image_size", 16, "-p image_size: expected a whole number >= 32, got 16"),
    ("n_splits", "x", "-p n_splits: expected a whole number (the default is 5), got 'x'"),
    ("learning_rates", [1e-3, -1], "-p learning_rates: each item expected a number > 0, got -1"),
])
def test_a_bad_parameter_stops_the_run_before_any_notebook_starts(tmp_path, synthetic_data_dir, parameter,
                                                                  value,
                                                                  message):
    from muffin_lib.study.runner import run_series

    with pytest.raises(MuffinError) as caught:
        run_series(profile="smoke", data_dir=synthetic_data_dir, work_dir=tmp_path / "work",
                   parameters={parameter: value}, progress=False)
    assert str(caught.value) == message
    executed = tmp_path / "work" / "executed"
    assert not executed.exists() or not any(executed.iterdir())


def test_run_cli_names_the_parameter_as_typed(capsys, tmp_path, synthetic_data_dir):
    from muffin_lib import cli

    code = cli.main(["run", "--profile", "smoke", "--data-dir", str(synthetic_data_dir),
                     "--work-dir", str(tmp_path), "-p", "epochs", "abc"])
    assert code == 2 and "-p epochs: expected a whole number >= 1, got 'abc'" in capsys.readouterr().err


def test_a_long_notebook_shows_its_progress_in_the_terminal_log(tmp_path, capsys, monkeypatch):
    from muffin_lib.study import runner

    folder = tmp_path / "notebooks"
    folder.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    parameters = nbformat.v4.new_code_cell('data_dir = "../data"\nwork_dir = "../work"\nprofile = "full"')
    parameters.metadata["tags"] = ["parameters"]
    loop = ("import time\nfrom muffin_lib.progress import progress_bar\n"
            "for _ in progress_bar(range(8), desc='deeper_cnn', unit='epoch'):\n    time.sleep(0.5)")
    nb.cells = [parameters, nbformat.v4.new_code_cell(loop)]
    nbformat.write(nb, folder / "00_long.ipynb")
    (tmp_path / "data").mkdir()
    monkeypatch.setattr(runner._Log, "LOG_EVERY", 0.0)  # a plain line at every change (a log file, not a tty)
    run_series(data_dir=tmp_path / "data", work_dir=tmp_path / "work", notebooks_dir=folder)
    out = capsys.readouterr().out
    steps = [line.strip() for line in out.splitlines() if line.strip().startswith("deeper_cnn ")]
    assert len(steps) >= 2 and any("/8 epoch [" in step for step in steps), out
