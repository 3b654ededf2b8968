"""scan + audit: bad files are rejected by name with a reason, odd-but-valid ones are accepted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from muffin_lib import cli
from muffin_lib.config import CLASSES
from muffin_lib.data.scan import audit_dataset, format_audit, scan_dataset
from muffin_lib.errors import MuffinError

REJECTED = {  # file -> words its reason must contain
    "train/Muffin/truncated.jpg": "truncated",
    "train/Muffin/empty.jpg": "empty file",
    "train/Muffin/notes.jpg": "text",
}


def _jpeg(path: Path, size=(40, 30), colour=(180, 120, 60), mode="RGB", **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, "JPEG", **kwargs)
    return path


def make_messy_dataset(root: Path) -> Path:
    """Upper-case folders and extensions, every odd image kind, bad files, and stray folders/files."""
    muffin, chihuahua = root / "train" / "Muffin", root / "train" / "CHIHUAHUA"
    _jpeg(muffin / "good.jpg")
    _jpeg(muffin / "UPPER.JPG", colour=(10, 20, 30))
    _jpeg(muffin / "cmyk.jpeg", mode="CMYK", colour=(0, 50, 100, 0))
    Image.fromarray(np.full((20, 30), 40000, dtype=np.uint16)).save(muffin / "deep16.png")
    palette = Image.new("P", (12, 12), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.save(muffin / "palette.png", transparency=0)
    Image.new("LA", (10, 10), (50, 128)).save(muffin / "grey_alpha.png")
    Image.new("RGB", (16, 16), (1, 2, 3)).save(muffin / "png_named.jpg", "PNG")
    _jpeg(muffin / "one_pixel.jpg", size=(1, 1))
    gradient = np.ascontiguousarray(np.broadcast_to(np.linspace(0, 255, 6000, dtype=np.uint8), (4000, 6000)))
    Image.fromarray(gradient).save(muffin / "huge.jpg", quality=50)
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(muffin / "noise.jpg", quality=95)
    data = (muffin / "noise.jpg").read_bytes()
    (muffin / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (muffin / "empty.jpg").write_bytes(b"")
    (muffin / "notes.jpg").write_text("this is not a photo\n")
    (muffin / "readme.txt").write_text("stray file")
    for i in range(3):
        _jpeg(chihuahua / f"dog_{i}.JPEG", colour=(220, 200, 160 + 20 * i))
    (root / "train" / "stray.txt").write_text("not a class folder")  # a file beside the class folders
    for label, name in enumerate(CLASSES):
        _jpeg(root / "test" / name / "t.jpg", colour=(label * 100, 50, 50))
    shutil.copy(muffin / "good.jpg", root / "test" / "muffin" / "leaked.jpg")  # cross-split duplicate
    (root / "extra").mkdir()
    return root


@pytest.fixture
def messy(tmp_path) -> Path:
    return make_messy_dataset(tmp_path / "messy")


def test_scan_rejects_bad_files_by_name_and_accepts_odd_valid_ones(messy):
    result = scan_dataset(messy, progress=False)
    rejected = {r.path.relative_to(messy).as_posix(): r.reason for r in result.rejected}
    assert set(rejected) == set(REJECTED)
    for relpath, words in REJECTED.items():
        assert words in rejected[relpath]

    train = result.records_for("train")
    names = [r.relpath for r in train]
    assert names == sorted(names)
    by_name = {Path(r.relpath).name: r for r in train}
    for name in ("UPPER.JPG", "cmyk.jpeg", "deep16.png", "palette.png", "grey_alpha.png", "png_named.jpg",
                 "one_pixel.jpg", "huge.jpg"):
        assert by_name[name].label == CLASSES.index("muffin"), name
    assert by_name["dog_0.JPEG"].label == CLASSES.index("chihuahua")
    assert by_name["png_named.jpg"].format == "PNG"
    assert by_name["cmyk.jpeg"].mode == "CMYK" and by_name["huge.jpg"].width == 6000
    assert all(r.path.is_absolute() and r.sha256 and r.nbytes > 0 for r in train)

    warnings = "\n".join(result.warnings)
    assert "png_named.jpg: a PNG file with a .jpg name; accepted" in warnings
    assert "train/stray.txt: a file beside the class folders" in warnings
    assert result.class_names == CLASSES  # upper-case folders name the same classes
    assert "readme.txt" in warnings and "extra/" in warnings


def test_fingerprint_follows_the_files(messy):
    before = scan_dataset(messy, progress=False)
    assert before.fingerprint("train") == scan_dataset(messy, progress=False).fingerprint("train")
    _jpeg(messy / "train" / "Muffin" / "new.jpg")
    after = scan_dataset(messy, progress=False)
    assert after.fingerprint("train") != before.fingerprint("train")
    assert after.fingerprint("test") == before.fingerprint("test")


def test_scan_index_makes_a_rescan_reuse_results_and_notices_changes(messy, tmp_path, monkeypatch):
    work = tmp_path / "work"
    first = scan_dataset(messy, work, progress=False)
    import muffin_lib.data.scan as scan_module

    checked = []
    real = scan_module.inspect_image
    monkeypatch.setattr(scan_module, "inspect_image", lambda path: checked.append(path) or real(path))
    second = scan_dataset(messy, work, progress=False, workers=1)
    assert checked == [] and second.records == first.records and second.rejected == first.rejected
    _jpeg(messy / "train" / "Muffin" / "good.jpg", colour=(0, 0, 0), quality=20)  # rewritten in place
    third = scan_dataset(messy, work, progress=False, workers=1)
    assert [Path(p).name for p in checked] == ["good.jpg"]
    assert {r.relpath: r.sha256 for r in third.records}["train/Muffin/good.jpg"] != \
        {r.relpath: r.sha256 for r in first.records}["train/Muffin/good.jpg"]


def test_scan_with_process_pool_matches_serial(synthetic_data_dir):
    serial = scan_dataset(synthetic_data_dir, progress=False, workers=1)
    pooled = scan_dataset(synthetic_data_dir, progress=False, workers=2)
    assert pooled.records == serial.records and len(serial.records) == 88 and serial.synthetic


def test_missing_data_and_missing_train_split_say_to_fetch(tmp_path):
    with pytest.raises(MuffinError, match="does not exist.*muffin_lib fetch"):
        scan_dataset(tmp_path / "nowhere", progress=False)
    _jpeg(tmp_path / "nested" / "inner" / "train" / "muffin" / "a.jpg")
    with pytest.raises(MuffinError, match=r"no train/ folder.*one level down.*inner"):
        scan_dataset(tmp_path / "nested", progress=False)


def test_audit_report_counts_duplicates_and_rejects(messy):
    report = audit_dataset(messy, progress=False)
    json.dumps(report)  # JSON-able
    assert report["splits"]["train"]["per_class"] == {"chihuahua": 3, "muffin": 10}
    assert report["splits"]["test"]["total"] == 3
    assert report["duplicates"]["n_cross_split"] == 1
    leaked = next(g for g in report["duplicates"]["groups"] if g["cross_split"])
    assert leaked["files"] == ["test/muffin/leaked.jpg", "train/Muffin/good.jpg"]
    assert {item["path"] for item in report["rejected"]} == set(REJECTED)
    assert report["sizes"]["width"]["max"] == 6000 and report["modes"]["CMYK"] == 1
    text = format_audit(report)
    assert "LEAKAGE" in text and "train/Muffin/empty.jpg: empty file" in text


def test_cli_audit_lists_rejects_and_exits_zero(messy, capsys, monkeypatch):
    monkeypatch.setenv("MUFFIN_PROGRESS", "off")
    assert cli.main(["audit", str(messy)]) == 0
    out = capsys.readouterr().out
    for relpath, words in REJECTED.items():
        line = next(line for line in out.splitlines() if relpath in line)
        assert words in line

    assert cli.main(["audit", str(messy), "--json", "--work-dir", str(messy.parent / "work")]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["n_images"] == 16 and report["n_rejected"] == 3


def test_cli_audit_of_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["audit", str(tmp_path / "nowhere")]) == 2
    assert "muffin_lib fetch" in capsys.readouterr().err
