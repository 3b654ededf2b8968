"""Shared fixtures: a small synthetic dataset made once per session, and the real data on project machines."""

from __future__ import annotations

from pathlib import Path

import pytest

from muffin_lib.data.synthetic import make_synthetic_dataset

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEV_DATA = SHARED_DATA / "muffin-chihuahua-dev"
ORIGINALS = SHARED_DATA / "originals-sample"


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> Path:
    """A small synthetic dataset in the Kaggle layout (train 64 = 32 + 32, test 24, 48 px JPEGs). Read-only
    by convention: copy it (shutil.copytree) before changing files in it."""
    root = tmp_path_factory.mktemp("synthetic") / "muffin-vs-chihuahua"
    return make_synthetic_dataset(root, n_train=64, n_test=24, image_size=48, seed=0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the clone (the real dev set and originals), or skip."""
    if not DEV_DATA.is_dir():
        pytest.skip(f"real data {DEV_DATA} absent: ../shared/data is only on the project machines")
    return SHARED_DATA
