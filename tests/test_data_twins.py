"""Near-duplicate twins: detection, transitive groups, the audit block, grouped splits, twin-free scores."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from muffin_lib.cli import main
from muffin_lib.config import WorkDir
from muffin_lib.data import twins
from muffin_lib.data.scan import audit_dataset, scan_dataset
from muffin_lib.data.splits import load_or_create_splits, make_split_plan, plan_for_scan
from muffin_lib.data.synthetic import make_image, twin_variant
from muffin_lib.data.twins import find_twins, group_pairs
from muffin_lib.training.metrics import scores_by_part


def _save(image: Image.Image, path, quality=90):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=quality)


@pytest.fixture
def twin_data(synthetic_data_dir, tmp_path):
    """The synthetic set plus hand-made twins of one training photo: re-encoded, resized, slightly cropped."""
    root = shutil.copytree(synthetic_data_dir, tmp_path / "data")
    original = Image.open(root / "train/muffin/synthetic_00001.jpg").convert("RGB")
    w, h = original.size
    _save(original, root / "test/muffin/reencoded.jpg", quality=55)
    _save(original.resize((w * 2, h * 2), Image.Resampling.BICUBIC), root / "train/muffin/resized.jpg")
    _save(original.crop((1, 1, w - 1, h)), root / "test/muffin/cropped.jpg")
    return root


def test_reencoded_resized_and_cropped_copies_are_one_group(twin_data):
    found = find_twins(scan_dataset(twin_data, progress=False).records, progress=False)
    group = found.group_of("train/muffin/synthetic_00001.jpg")
    assert group is not None
    members = set(found.groups[group])
    assert {"test/muffin/reencoded.jpg", "train/muffin/resized.jpg", "test/muffin/cropped.jpg"} <= members
    assert found.has_twin_in("test/muffin/cropped.jpg", "train")


def test_planted_synthetic_twins_are_all_found_and_unrelated_images_are_not(synthetic_data_dir):
    found = find_twins(scan_dataset(synthetic_data_dir, progress=False).records, progress=False)
    # make_synthetic_dataset plants test image i (i % 10 == 3) and train image i (i % 16 == 5) as twins
    planted = {"test/muffin/synthetic_00003.jpg", "test/muffin/synthetic_00013.jpg",
               "test/muffin/synthetic_00023.jpg", "train/muffin/synthetic_00005.jpg",
               "train/muffin/synthetic_00021.jpg", "train/muffin/synthetic_00037.jpg",
               "train/muffin/synthetic_00053.jpg"}
    grouped = {p for g in found.groups for p in g}
    assert planted <= grouped
    assert len(grouped) <= 2 * len(planted)  # the twins and their sources, nothing else


def test_variants_of_a_photo_are_twins_and_other_photos_are_not():
    rng = np.random.default_rng(0)
    photos = [make_image(i % 2, np.random.default_rng(i), 96) for i in range(12)]
    variants = [twin_variant(p, rng) for p in photos]
    signatures = [twins.image_signature_of(image) for image in photos + variants]
    hashes = np.stack([np.frombuffer(s[0], dtype=np.uint8) for s in signatures])
    thumbs = np.stack([np.frombuffer(s[1], dtype=np.uint8) for s in signatures])
    pairs = set(twins.twin_pairs(hashes, thumbs))
    assert all((i, i + 12) in pairs for i in range(12))
    assert all(j == i + 12 for i, j in pairs)


def test_groups_are_transitive():
    assert group_pairs(6, [(0, 1), (1, 4), (2, 5)]) == [[0, 1, 4], [2, 5]]
    assert group_pairs(3, []) == []


def test_audit_reports_twin_groups_and_caches_them(twin_data, tmp_path, monkeypatch):
    report = audit_dataset(twin_data, tmp_path / "work", progress=False)
    near = report["near_duplicates"]
    for key in ("groups", "n_groups", "n_images_in_groups", "test_with_train_twin", "conflicting_labels"):
        assert key in near
    assert near["test_with_train_twin"] >= 2 + 3  # the two hand-made copies and the planted ones
    assert near["conflicting_labels"] == []
    assert near["n_images_in_groups"] == sum(len(g) for g in near["groups"])

    def no_decoding(path):
        raise AssertionError("the second audit must read the cached near-duplicates")

    monkeypatch.setattr(twins, "image_signature", no_decoding)
    assert audit_dataset(twin_data, tmp_path / "work", progress=False)["near_duplicates"] == near


def test_audit_text_and_json_name_the_twins(twin_data, capsys):
    assert main(["audit", str(twin_data), "--json"]) == 0
    near = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["near_duplicates"]
    assert any("test/muffin/cropped.jpg" in group for group in near["groups"])
    assert main(["audit", str(twin_data)]) == 0
    text = capsys.readouterr().out
    assert "Near-duplicates (twins)" in text and "have a twin in train" in text


def _side_of(folds_or_parts) -> dict[str, int]:
    return {path: number for number, part in enumerate(folds_or_parts) for path in part}


def test_split_json_keeps_every_twin_group_on_one_side(twin_data, tmp_path, capsys):
    assert main(["split", "--data-dir", str(twin_data), "--work-dir", str(tmp_path / "w"), "--folds", "3",
                 "--json"]) == 0
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(plan["folds"]) == 3
    fold_of = _side_of(plan["folds"])
    fit_or_val = _side_of([plan["fit"], plan["validation"]])
    train_groups = [[p for p in g if p.startswith("train/")] for g in plan["twin_groups"]]
    train_groups = [g for g in train_groups if len(g) > 1]
    assert train_groups, "the fixture has twins inside train"
    for group in train_groups:
        assert len({fold_of[p] for p in group}) == 1
        assert len({fit_or_val[p] for p in group}) == 1
    assert "test/muffin/cropped.jpg" in plan["test_with_train_twin"]
    assert set(plan["test_twin_free"]).isdisjoint(plan["test_with_train_twin"])
    n_test = len(scan_dataset(twin_data, progress=False).records_for("test"))
    parts = ("test_twin_free", "test_with_train_twin", "test_twin_of_test")
    assert sum(len(plan[part]) for part in parts) == n_test
    assert len(set().union(*(plan[part] for part in parts))) == n_test


def test_grouped_plan_is_stratified_and_never_splits_a_group():
    labels = np.array([0] * 60 + [1] * 40)
    groups = np.arange(100)
    groups[[0, 1, 2]] = 1000  # a group of three chihuahuas
    groups[[70, 71]] = 1001
    plan = make_split_plan(labels, groups, n_splits=5, seed=0)
    for members in ([0, 1, 2], [70, 71]):
        assert np.isin(members, plan.val_idx).sum() in (0, len(members))
        holding = [k for k, (_, test) in enumerate(plan.folds) if np.isin(members, test).any()]
        assert len(holding) == 1 and np.isin(members, plan.folds[holding[0]][1]).all()
    for _, test in plan.folds:
        assert 16 <= len(test) <= 24 and abs(labels[test].mean() - 0.4) < 0.1


def test_old_ungrouped_splits_file_is_replaced_with_a_message(tmp_path, caplog):
    labels = np.array([0] * 30 + [1] * 30)
    path = WorkDir(tmp_path).splits_file
    path.write_text(json.dumps({"version": 1, "plans": {"seed=0,val_fraction=0.2,n_splits=5": {"n": 60}}}))
    with caplog.at_level(logging.WARNING):
        plan = load_or_create_splits(tmp_path, labels, "fp", groups=None)
    assert "without near-duplicate (twin) groups" in caplog.text
    assert plan.n == 60 and json.loads(path.read_text())["version"] == 2


def test_changed_twin_groups_rebuild_the_plan(tmp_path, caplog):
    labels = np.array([0] * 30 + [1] * 30)
    first = load_or_create_splits(tmp_path, labels, "fp", groups=None)
    groups = np.arange(60)
    groups[list(first.val_idx[:1]) + list(first.train_idx[:1])] = 999  # a twin pair across fit/validation
    with caplog.at_level(logging.WARNING):
        second = load_or_create_splits(tmp_path, labels, "fp", groups=groups)
    assert "making it anew" in caplog.text
    pair = [first.val_idx[0], first.train_idx[0]]
    assert np.isin(pair, second.val_idx).all() or not np.isin(pair, second.val_idx).any()
    assert second.identity != first.identity


def test_twin_free_part_keeps_one_image_per_test_twin_group():
    found = twins.TwinGroups([
        ["test/muffin/b.jpg", "test/muffin/a.jpg"],  # test-only twins: the first by path, a.jpg, stays
        ["test/chihuahua/c.jpg", "train/chihuahua/x.jpg"],  # a train twin: left out
        ["test/muffin/d.jpg", "test/muffin/e.jpg", "train/muffin/y.jpg"],
    ])
    paths = ["test/chihuahua/c.jpg", "test/chihuahua/single.jpg", "test/muffin/a.jpg", "test/muffin/b.jpg",
             "test/muffin/d.jpg", "test/muffin/e.jpg"]
    assert found.twin_free_mask(paths).tolist() == [False, True, True, False, False, False]
    # the choice depends on the path alone, not on which other test images are asked about
    assert found.twin_free_mask(["test/muffin/b.jpg"]).tolist() == [False]
    assert found.twin_free_mask(["test/muffin/a.jpg"]).tolist() == [True]


def test_split_report_and_twin_free_test_images_keep_one_image_per_test_twin_group(twin_data, tmp_path):
    from muffin_lib.data.splits import split_plan_report, twin_free_test_images

    original = Image.open(twin_data / "test/chihuahua/synthetic_00000.jpg").convert("RGB")
    _save(original, twin_data / "test/chihuahua/synthetic_00000_copy.jpg", quality=60)
    scan = scan_dataset(twin_data, progress=False)
    plan, found = plan_for_scan(scan, tmp_path, n_splits=3)
    pair = ["test/chihuahua/synthetic_00000.jpg", "test/chihuahua/synthetic_00000_copy.jpg"]
    assert found.group_of(pair[0]) == found.group_of(pair[1]) is not None
    report = split_plan_report(plan, found, scan)
    assert pair[0] in report["test_twin_free"] and pair[1] in report["test_twin_of_test"]
    assert "test/muffin/cropped.jpg" in report["test_with_train_twin"]
    paths, free = twin_free_test_images(twin_data, tmp_path)
    assert [p for p, keep in zip(paths, free, strict=True) if keep] == report["test_twin_free"]


def test_scores_by_part_separate_the_twin_free_images():
    correct = np.array([True, True, False, False, True])
    free = np.array([True, True, True, False, False])
    parts = scores_by_part(correct, free)
    assert parts["all"]["errors"] == 2 and parts["all"]["n"] == 5
    assert parts["twin_free"]["errors"] == 1 and parts["twin_free"]["n"] == 3
    assert parts["with_train_twin"]["n"] == 2
    assert parts["twin_free"]["ci_low"] < 1 / 3 < parts["twin_free"]["ci_high"]


def test_plan_for_scan_gives_groups_in_cache_order(twin_data, tmp_path):
    scan = scan_dataset(twin_data, progress=False)
    plan, found = plan_for_scan(scan, tmp_path, n_splits=3)
    paths = [r.relpath for r in scan.records_for("train")]
    resized, source = paths.index("train/muffin/resized.jpg"), paths.index("train/muffin/synthetic_00001.jpg")
    assert plan.groups[resized] == plan.groups[source]
    assert found.group_of("train/muffin/resized.jpg") == found.group_of("test/muffin/reencoded.jpg")


@pytest.mark.realdata
@pytest.mark.slow  # hashes every dev image: 7 s
def test_dev_data_twins_match_a_careful_check(shared_data, tmp_path):
    report = audit_dataset(shared_data / "muffin-chihuahua-dev", tmp_path, progress=False)
    near = report["near_duplicates"]
    # 32 px thumbnail correlation >= 0.95, pairs checked by eye, finds 82 test images with a train twin
    assert 75 <= near["test_with_train_twin"] <= 110
    assert near["conflicting_labels"] == []
    found = twins.TwinGroups(near["groups"])
    pair = ("train/muffin/img_0_261.jpg", "test/muffin/img_4_747.jpg")
    assert found.group_of(pair[0]) == found.group_of(pair[1]) is not None
