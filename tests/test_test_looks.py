"""The test split is scored once, after every choice, and every look is recorded (muffin_lib.test_looks):
notebook 09's evaluate_candidates refuses another candidate set unless forced; evaluate_on_split and predict
on a dataset's test folder record their look."""

from __future__ import annotations

import json
import shutil

import pytest

from muffin_lib import cli, test_looks
from muffin_lib.config import WorkDir
from muffin_lib.errors import MuffinError
from muffin_lib.selection import evaluation
from muffin_lib.study import report
from muffin_lib.study.summary import format_summary
from muffin_lib.training import predict, train
from muffin_lib.training.engine import TrainConfig

CONFIG = TrainConfig(model="simple_cnn", image_size=32, color_mode="grayscale", epochs=1, batch_size=16)


@pytest.fixture(scope="module")
def checkpoints(synthetic_data_dir, tmp_path_factory):
    """Two tiny checkpoints trained once; each test copies them into its own work dir."""
    work_dir = tmp_path_factory.mktemp("looks-train")
    a = train.train_model(synthetic_data_dir, work_dir, CONFIG, device="cpu", progress=False).checkpoint_path
    b = train.train_model(synthetic_data_dir, work_dir, CONFIG.replace(seed=1), device="cpu", progress=False,
                          checkpoint_path=work_dir / "checkpoints" / "other.pt").checkpoint_path
    return synthetic_data_dir, work_dir, a, b


def _evaluate(data_dir, work_dir, candidates, **kwargs):
    return evaluation.evaluate_candidates(candidates, data_dir, work_dir, device="cpu", progress=False, **kwargs)


def test_one_look_recorded_rerun_allowed_other_set_refused_unless_forced(checkpoints, tmp_path):
    data_dir, train_work, a, b = checkpoints
    work_dir = tmp_path / "work"
    shutil.copytree(train_work, work_dir)  # splits, caches and twins: only the look record is new
    assert test_looks.looks(work_dir) == []

    first = _evaluate(data_dir, work_dir, {"simple_cnn": a})
    assert first.n_looks == 1
    [look] = test_looks.looks(work_dir)
    assert look["who"] == "09_final_test" and list(look["candidates"]) == ["simple_cnn"]
    assert look["candidates"]["simple_cnn"]["sha256"] == test_looks.file_sha256(a)
    assert look["candidates"]["simple_cnn"]["config_key"] == CONFIG.key()
    assert look["data_fingerprint"] and look["code_version"] and look["at"].endswith("+00:00")
    assert json.loads(WorkDir(work_dir).test_looks_file.read_text())["looks"] == [look]

    again = _evaluate(data_dir, work_dir, {"simple_cnn": a})  # an interrupted 09 re-run: not a new look
    assert again.n_looks == 1 and len(test_looks.looks(work_dir)) == 1
    assert len(test_looks.looks(work_dir)[0]["repeats"]) == 1

    with pytest.raises(MuffinError) as refused:
        _evaluate(data_dir, work_dir, {"simple_cnn": a, "other": b})
    message = str(refused.value)
    assert "\n" not in message and "already scored" in message and look["at"] in message
    assert "allow_new_test_look = True" in message
    assert len(test_looks.looks(work_dir)) == 1  # a refused look is not a look

    forced = _evaluate(data_dir, work_dir, {"simple_cnn": a, "other": b}, allow_new_look=True)
    assert forced.n_looks == 2
    recorded = test_looks.looks(work_dir)
    assert [sorted(x["candidates"]) for x in recorded] == [["simple_cnn"], ["other", "simple_cnn"]]
    assert forced.looks == recorded

    # the 09 results and the runner's summary say it
    check = evaluation.calibration_check(forced, "simple_cnn")
    results = report.final_results(forced, check, [], synthetic=True)
    assert results["n_test_looks"] == 2 and len(results["test_looks"]) == 2
    json.dumps(results, default=str)
    summary = {"synthetic": False, "data_dir": "d", "profile": "full", "work_dir": "w", "environment": {},
               "notebooks": {}, "models": {}, "findings": [], "results": {"09_final_test": results}}
    assert "- test split looks: 2" in format_summary(summary)
    assert "test split looks" not in format_summary({**summary, "results": {}})


def test_check_candidates_directly(tmp_path):
    checkpoint = tmp_path / "m.pt"
    checkpoint.write_bytes(b"weights")
    test_looks.check_candidates(tmp_path, {"m": checkpoint}, allow_new_look=False)  # nothing recorded yet
    look = test_looks.record_look(tmp_path, "predict", {"m": checkpoint}, tmp_path, data_fingerprint="abc")
    assert look["new"] and look["n_looks"] == 1
    test_looks.check_candidates(tmp_path, {"m": checkpoint}, False, data_fingerprint="abc")
    test_looks.check_candidates(tmp_path, {"n": checkpoint}, False, data_fingerprint="other split")
    with pytest.raises(MuffinError, match="allow_new_test_look"):
        test_looks.check_candidates(tmp_path, {"n": checkpoint}, False, data_fingerprint="abc")
    checkpoint.write_bytes(b"retrained")  # same name, other weights: another candidate
    with pytest.raises(MuffinError):
        test_looks.check_candidates(tmp_path, {"m": checkpoint}, False, data_fingerprint="abc")
    test_looks.check_candidates(tmp_path, {"m": checkpoint}, True, data_fingerprint="abc")


def test_an_ensemble_is_identified_by_its_members(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"a weights")
    b.write_bytes(b"b weights")
    ensemble = test_looks.identify({"e": {"a": a, "b": b}})["e"]
    assert ensemble["checkpoint"] is None and sorted(ensemble["members"]) == ["a", "b"] and ensemble["sha256"]
    copies = tmp_path / "copies"
    copies.mkdir()
    moved = {name: shutil.copy(path, copies / path.name) for name, path in (("a", a), ("b", b))}
    assert test_looks.identify({"e": moved})["e"]["sha256"] == ensemble["sha256"]  # same members, other files
    test_looks.record_look(tmp_path, "09_final_test", {"a": a, "b": b, "e": {"a": a, "b": b}}, tmp_path,
                           data_fingerprint="abc")
    test_looks.check_candidates(tmp_path, {"a": a, "b": b, "e": moved}, False, data_fingerprint="abc")
    with pytest.raises(MuffinError):  # the same checkpoints without their ensemble: another set
        test_looks.check_candidates(tmp_path, {"a": a, "b": b}, False, data_fingerprint="abc")
    b.write_bytes(b"b retrained")  # a changed member changes the ensemble
    assert test_looks.identify({"e": {"a": a, "b": b}})["e"]["sha256"] != ensemble["sha256"]
    with pytest.raises(MuffinError):
        test_looks.check_candidates(tmp_path, {"a": a, "b": b, "e": {"a": a, "b": b}}, False, data_fingerprint="abc")
    assert test_looks.identify({"e": {"a": a, "gone": tmp_path / "gone.pt"}})["e"]["sha256"] is None


def test_code_version_never_fails(monkeypatch, tmp_path):
    assert test_looks.code_version()
    monkeypatch.setattr(test_looks, "PACKAGE_PARENT", tmp_path)  # no git checkout there: the package version
    assert test_looks.code_version().startswith("muffin-lab ")
    (tmp_path / ".git").mkdir()  # a checkout, but no git program
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert test_looks.code_version().startswith("muffin-lab ")


def test_evaluate_on_split_records_a_test_look(checkpoints, tmp_path):
    data_dir, train_work, a, _ = checkpoints
    work_dir = tmp_path / "work"
    shutil.copytree(train_work, work_dir)
    train.evaluate_on_split(a, data_dir, work_dir, "train", device="cpu", progress=False)
    assert test_looks.looks(work_dir) == []  # only the test split counts
    result = train.evaluate_on_split(a, data_dir, work_dir, "test", device="cpu", progress=False)
    assert result["n_test_looks"] == 1
    [look] = test_looks.looks(work_dir)
    assert look["who"] == "evaluate_on_split" and list(look["candidates"]) == ["simple_cnn"]


def test_predict_on_a_test_folder_records_a_look(checkpoints, tmp_path, capsys):
    data_dir, train_work, a, _ = checkpoints
    work_dir = tmp_path / "work"
    shutil.copytree(train_work, work_dir)
    photo = next((data_dir / "test" / "muffin").iterdir())
    assert predict.predict_paths(a, [photo], device="cpu", work_dir=work_dir)["test_look"] is None  # one photo
    result = predict.predict_paths(a, [data_dir / "test"], device="cpu", work_dir=work_dir)
    assert result["test_look"]["n_looks"] == 1 and result["test_look"]["new"]
    [look] = test_looks.looks(work_dir)
    assert look["who"] == "predict" and look["data_dir"] == str(data_dir.resolve())
    capsys.readouterr()

    # a class folder of the test split is the same look; the CLI says so
    assert cli.main(["predict", str(a), str(data_dir / "test" / "muffin"), "--device", "cpu",
                     "--work-dir", str(work_dir)]) == 0
    assert "test split look already recorded" in capsys.readouterr().out.splitlines()[-1]
    assert len(test_looks.looks(work_dir)) == 1

    # without a work dir: not recorded, and one line on stderr says how to record it
    assert cli.main(["predict", str(a), str(data_dir / "test"), "--device", "cpu", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["test_look"] is None
    [line] = [x for x in captured.err.splitlines() if "not recorded" in x]
    assert "--work-dir" in line
