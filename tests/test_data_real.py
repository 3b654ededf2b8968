"""The data layer on the real images in ../shared/data (skipped where that folder is absent)."""

from __future__ import annotations

import pytest
import torch

from muffin_lib import config
from muffin_lib.data.imageio import load_image, preprocess_image
from muffin_lib.data.scan import audit_dataset

pytestmark = pytest.mark.realdata


@pytest.mark.slow  # audits every dev image: 7 s
def test_audit_of_the_dev_set(shared_data, tmp_path):
    report = audit_dataset(shared_data / "muffin-chihuahua-dev", tmp_path / "work", progress=False)
    assert report["n_images"] == 4733 and report["n_rejected"] == 0 and not report["synthetic"]
    assert report["splits"]["train"]["total"] == 3786
    assert report["splits"]["train"]["per_class"] == {"chihuahua": 2047, "muffin": 1739}
    assert report["splits"]["test"]["per_class"] == {"chihuahua": 512, "muffin": 435}
    assert report["sizes"]["shorter_side"]["max"] == 256
    assert report["duplicates"]["n_cross_split"] == 0


def test_every_original_decodes_and_preprocesses_in_both_colour_modes(shared_data):
    files = sorted(p for p in (shared_data / "originals-sample").rglob("*")
                   if p.suffix.lower() in config.IMAGE_EXTENSIONS)
    assert len(files) == 122
    modes = set()
    for path in files:
        image = load_image(path)
        modes.add(image.mode)
        assert image.mode in ("RGB", "L")
        grey = preprocess_image(path, 48, "grayscale")
        rgb = preprocess_image(path, 48, "rgb")
        assert grey.dtype == torch.uint8 and tuple(grey.shape) == (1, 48, 48), path.name
        assert tuple(rgb.shape) == (3, 48, 48), path.name
        assert rgb.float().std() > 0, f"{path.name} preprocessed to a flat image"
    assert modes == {"RGB", "L"}  # greyscale originals stay greyscale
