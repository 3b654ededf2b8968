"""One test look, enforced on every path (muffin_lib.test_looks.gate): whatever scores a dataset's test split
(notebook 09's evaluate_candidates, evaluate_on_split, predict on its files or folders) is recorded before it
scores, in the user's cache dir whatever the work dir, and a checkpoint never scored there is refused once the
split has a look, unless forced; a forced look is counted beside every test number."""

from __future__ import annotations

import json
import shutil

import pytest

from muffin_lib import cli, selection, test_looks
from muffin_lib.data.scan import scan_dataset
from muffin_lib.errors import MuffinError
from muffin_lib.selection import evaluation
from muffin_lib.study import report
from muffin_lib.study.summary import format_ending, format_summary
from muffin_lib.training import predict, train
from muffin_lib.training.recipe import TrainConfig

CONFIG = TrainConfig(model="simple_cnn", image_size=32, color_mode="grayscale", epochs=1, batch_size=16)


@pytest.fixture(scope="module")
def checkpoints(synthetic_data_dir, tmp_path_factory):
    """Two tiny checkpoints trained once; each test copies the work dir it needs."""
    work_dir = tmp_path_factory.mktemp("looks-train")
    a = train.train_model(synthetic_data_dir, work_dir, CONFIG, device="cpu", progress=False).checkpoint_path
    b = train.train_model(synthetic_data_dir, work_dir, CONFIG.replace(seed=1), device="cpu", progress=False,
                          checkpoint_path=work_dir / "checkpoints" / "other.pt").checkpoint_path
    return synthetic_data_dir, work_dir, a, b


def _evaluate(data_dir, work_dir, candidates, **kwargs):
    return evaluation.evaluate_candidates(candidates, data_dir, work_dir, device="cpu", progress=False,
                                          **kwargs)


def _looks(data_dir) -> list[dict]:
    return test_looks.looks(scan_dataset(data_dir, None, progress=False).fingerprint("test"))


def _copy(train_work, tmp_path, name="work"):
    shutil.copytree(train_work, tmp_path / name)  # splits, caches and twins
    return tmp_path / name


def test_one_look_recorded_rerun_allowed_a_new_checkpoint_refused_unless_forced(checkpoints, tmp_path):
    data_dir, train_work, a, b = checkpoints
    work_dir = _copy(train_work, tmp_path)
    assert _looks(data_dir) == []

    first = _evaluate(data_dir, work_dir, {"simple_cnn": a})
    assert first.n_looks == 1
    [look] = _looks(data_dir)
    assert look["who"] == "09_final_test" and list(look["candidates"]) == ["simple_cnn"]
    assert look["candidates"]["simple_cnn"]["sha256"] == test_looks.file_sha256(a)
    assert look["data_fingerprint"] and look["code_version"]
    assert look["at"].endswith("+00:00") and not look["forced"]

    again = _evaluate(data_dir, work_dir, {"simple_cnn": a})  # an interrupted 09 re-run: not a new look
    assert again.n_looks == 1 and len(_looks(data_dir)) == 1 and len(_looks(data_dir)[0]["repeats"]) == 1

    with pytest.raises(MuffinError) as refused:
        _evaluate(data_dir, work_dir, {"simple_cnn": a, "other": b})
    message = str(refused.value)
    assert "\n" not in message and "already scored" in message and look["at"] in message
    assert "allow_new_test_look = True" in message
    assert len(_looks(data_dir)) == 1  # a refused look is not a look

    forced = _evaluate(data_dir, work_dir, {"simple_cnn": a, "other": b}, allow_new_look=True)
    assert forced.n_looks == 2 and forced.looks == _looks(data_dir) and _looks(data_dir)[1]["forced"]

    # Every test number shown after a forced look says which look it is.
    check = evaluation.calibration_check(forced, "simple_cnn")
    findings = report.final_test_findings(forced)
    assert findings and all("look 2 of this test split" in line for line in findings)
    results = report.final_results(forced, check, findings, synthetic=True)
    json.dumps(results, default=str)
    summary = {"synthetic": False, "data_dir": "d", "profile": "full", "work_dir": "w", "environment": {},
               "notebooks": {}, "findings": [], "results": {"09_final_test": results},
               "models": {"simple_cnn": {"test_twin_free": 0.1, "test_twin_free_ci": [0.05, 0.2]}}}
    assert "- test split looks: 2" in format_summary(summary)
    assert "0.100 [0.050, 0.200] (look 2 of this test split)" in format_summary(summary)
    assert "look 2 of this test split" in format_ending(summary)
    assert "look 1" not in report.final_test_findings(first)[0]


def test_a_second_work_dir_on_the_same_data_does_not_start_a_clean_slate(checkpoints, tmp_path):
    data_dir, train_work, a, b = checkpoints
    _evaluate(data_dir, _copy(train_work, tmp_path, "one"), {"simple_cnn": a})
    with pytest.raises(MuffinError, match="already scored"):
        _evaluate(data_dir, _copy(train_work, tmp_path, "two"), {"other": b})


def test_predict_on_test_files_is_gated_like_a_folder_with_or_without_a_work_dir(checkpoints, capsys):
    data_dir, _, a, b = checkpoints
    files = sorted(str(p) for p in (data_dir / "test").rglob("*.jpg"))
    # no --work-dir: recorded all the same
    assert cli.main(["predict", str(a), *files, "--device", "cpu"]) == 0
    [look] = _looks(data_dir)
    assert look["who"] == "predict" and look["data_dir"] == str(data_dir.resolve())
    capsys.readouterr()
    # seen: free
    assert cli.main(["predict", str(a), str(data_dir / "test" / "muffin"), "--device", "cpu"]) == 0
    assert len(_looks(data_dir)) == 1
    assert cli.main(["predict", str(b), *files[:3], "--device", "cpu"]) == 2  # a new checkpoint: refused
    assert "--allow-new-test-look" in capsys.readouterr().err
    assert cli.main(["predict", str(b), *files, "--device", "cpu", "--allow-new-test-look"]) == 0
    out = capsys.readouterr().out
    assert "look 2 of this test split" in out and len(_looks(data_dir)) == 2


def test_predict_on_photos_outside_a_test_split_is_free(checkpoints, tmp_path):
    data_dir, _, a, _ = checkpoints
    photo = tmp_path / "mine.jpg"
    shutil.copy(next((data_dir / "test" / "muffin").iterdir()), photo)
    train_photo = next((data_dir / "train" / "muffin").iterdir())
    assert predict.predict_paths(a, [photo, train_photo], device="cpu")["test_look"] is None
    assert _looks(data_dir) == []


def test_evaluate_on_split_records_before_it_scores_and_refuses_a_new_look(checkpoints, tmp_path,
                                                                           monkeypatch):
    data_dir, train_work, a, b = checkpoints
    work_dir = _copy(train_work, tmp_path)
    train.evaluate_on_split(a, data_dir, work_dir, "train", device="cpu", progress=False)
    assert _looks(data_dir) == []  # only the test split counts
    real = train._predictions
    monkeypatch.setattr(train, "_predictions",
                        lambda *a, **k: pytest.fail("scored before the look was recorded")
                        if not _looks(data_dir) else real(*a, **k))
    result = train.evaluate_on_split(a, data_dir, work_dir, "test", device="cpu", progress=False)
    assert result["n_test_looks"] == 1 and _looks(data_dir)[0]["who"] == "evaluate_on_split"
    with pytest.raises(MuffinError, match="allow_new_look=True"):
        train.evaluate_on_split(b, data_dir, work_dir, "test", device="cpu", progress=False)
    forced = train.evaluate_on_split(b, data_dir, work_dir, "test", device="cpu", progress=False,
                                     allow_new_look=True)
    assert forced["n_test_looks"] == 2


def test_no_public_function_refits_and_scores_the_test_split_outside_the_gate():
    # selection.refit_and_test scored the test split and recorded nothing; the study never used it.
    assert not hasattr(selection, "refit_and_test")


def test_the_gate_directly_an_ensemble_is_its_members(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"a weights")
    b.write_bytes(b"b weights")
    ensemble = test_looks.identify({"e": {"a": a, "b": b}})["e"]
    assert ensemble["checkpoint"] is None and sorted(ensemble["members"]) == ["a", "b"] and ensemble["sha256"]
    look = test_looks.gate("09_final_test", {"a": a, "b": b, "e": {"a": a, "b": b}}, tmp_path,
                           data_fingerprint="abc")
    assert look["new"] and look["n_looks"] == 1
    assert not test_looks.gate("predict", {"a": a}, tmp_path, data_fingerprint="abc")["new"]  # scored already
    assert test_looks.gate("predict", {"n": b}, tmp_path, data_fingerprint="another split")["n_looks"] == 1
    b.write_bytes(b"b retrained")  # same name, other weights: a new checkpoint
    with pytest.raises(MuffinError, match="--allow-new-test-look"):
        test_looks.gate("predict", {"b": b}, tmp_path, data_fingerprint="abc")
    with pytest.raises(MuffinError):
        test_looks.gate("09_final_test", {"a": a, "e": {"a": a, "b": b}}, tmp_path, data_fingerprint="abc")
    assert test_looks.gate("predict", {"b": b}, tmp_path, data_fingerprint="abc",
                           allow_new_look=True)["n_looks"] == 2


def test_code_version_never_fails(monkeypatch, tmp_path):
    assert test_looks.code_version()
    monkeypatch.setattr(test_looks, "PACKAGE_PARENT", tmp_path)  # no git checkout there: the package version
    assert test_looks.code_version().startswith("muffin-lab ")
    (tmp_path / ".git").mkdir()  # a checkout, but no git program
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert test_looks.code_version().startswith("muffin-lab ")
