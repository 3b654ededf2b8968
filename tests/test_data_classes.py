"""Any ImageFolder dataset of two or more classes: class names from the folders, clear errors otherwise."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from muffin_lib.config import CLASSES
from muffin_lib.data import cache, extract, scan, splits, synthetic
from muffin_lib.errors import MuffinError

THREE = ("bagel", "cat", "donut")


@pytest.fixture(scope="module")
def three_class_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("three") / "pets-and-pastry"
    return synthetic.make_synthetic_dataset(root, n_train=60, n_test=15, image_size=32, classes=THREE)


def _tiny(root: Path, layout: dict[str, list[str]]) -> Path:
    for split, classes in layout.items():
        for name in classes:
            for i in range(2):
                (root / split / name).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (16, 16), (40 * i, 90, 30)).save(root / split / name / f"{i}.jpg")
    return root


def test_class_names_come_from_the_sorted_train_folders(three_class_dir, tmp_path):
    result = scan.scan_dataset(three_class_dir, progress=False)
    assert result.class_names == THREE and not result.warnings
    train = result.records_for("train")
    assert {r.class_name for r in train} == set(THREE)
    assert all(THREE[r.label] == r.class_name for r in result.records)
    assert [sum(r.label == k for r in train) for k in range(3)] == [20, 20, 20]
    report = scan.audit_dataset(three_class_dir, progress=False)
    assert report["class_names"] == list(THREE) and set(report["splits"]["test"]["per_class"]) == set(THREE)
    assert all(name in scan.format_audit(report) for name in THREE)
    assert extract.is_complete(three_class_dir)

    images = cache.load_images(three_class_dir, tmp_path, "train", 32, "rgb", progress=False)
    assert images.class_names == THREE and images.class_counts() == dict.fromkeys(THREE, 20)
    plan = splits.plan_for_cache(images, tmp_path)
    assert plan.class_names == THREE
    assert splits._from_json(splits._to_json(plan)).class_names == THREE


def test_the_default_dataset_keeps_its_names_and_labels(synthetic_data_dir):
    result = scan.scan_dataset(synthetic_data_dir, progress=False)
    assert result.class_names == CLASSES == ("chihuahua", "muffin")
    assert {r.class_name: r.label for r in result.records} == {"chihuahua": 0, "muffin": 1}
    stored = splits._to_json(splits.make_split_plan([0, 1] * 10, n_splits=2))
    del stored["class_names"]  # a plan written before class names were stored
    assert splits._from_json(stored).class_names == CLASSES


def test_synthetic_default_is_unchanged_by_the_classes_option(tmp_path):
    a = synthetic.make_synthetic_dataset(tmp_path / "a", n_train=20, n_test=10, image_size=24)
    b = synthetic.make_synthetic_dataset(tmp_path / "b", n_train=20, n_test=10, image_size=24,
                                         classes=("muffin", "chihuahua"))
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.jpg"))
    assert files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*.jpg"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    with pytest.raises(MuffinError, match="two or more"):
        synthetic.make_synthetic_dataset(tmp_path / "c", classes=("only",))


def test_a_single_class_is_one_clear_error(tmp_path):
    root = _tiny(tmp_path / "one", {"train": ["muffin"], "test": ["muffin"]})
    with pytest.raises(MuffinError) as error:
        scan.scan_dataset(root, progress=False)
    message = str(error.value)
    assert "\n" not in message and f"{root / 'train'} holds only muffin/" in message
    assert "two or more classes" in message and "Add a folder for each class" in message
    assert not extract.is_complete(root)


def test_class_folders_that_differ_between_the_splits_are_one_clear_error(tmp_path):
    missing = _tiny(tmp_path / "missing", {"train": ["cat", "dog", "muffin"], "test": ["cat", "muffin"]})
    with pytest.raises(MuffinError) as error:
        scan.scan_dataset(missing, progress=False)
    message = str(error.value)
    assert "\n" not in message and str(missing) in message and "missing from test/: dog/" in message
    assert "Add the missing folder(s)" in message

    extra = _tiny(tmp_path / "extra", {"train": ["cat", "dog"], "test": ["cat", "dog", "fox"]})
    with pytest.raises(MuffinError, match=r"in test/ but not in train/: fox/"):
        cache.load_images(extra, tmp_path / "work", "train", 16, "rgb", progress=False)
    assert not extract.is_complete(extra)

    shutil.rmtree(extra / "test" / "fox")
    assert scan.scan_dataset(extra, progress=False).class_names == ("cat", "dog")
