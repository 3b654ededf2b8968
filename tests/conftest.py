"""Shared fixtures: a small synthetic dataset made once per session, and the real data on project machines."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Tests assert numbers that must not depend on which CPU CI draws: amp="auto" would train in bf16 on a CPU
# with AMX and in fp32 elsewhere. Pin fp32 here (notebook kernels inherit it); the rule itself is tested
# with patched CPU flags (test_training_engine.py), and bf16 training by explicit amp="bf16" tests.
os.environ.setdefault("MUFFIN_CPU_BF16", "0")
# The user-level cache (the bf16 probe's verdicts) goes to a throwaway folder, never the user's own.
os.environ.setdefault("MUFFIN_CACHE_DIR", tempfile.mkdtemp(prefix="muffin-test-cache-"))

from muffin_lib.data.synthetic import make_synthetic_dataset

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEV_DATA = SHARED_DATA / "muffin-chihuahua-dev"
ORIGINALS = SHARED_DATA / "originals-sample"


@pytest.fixture(autouse=True)
def own_user_cache(tmp_path_factory, monkeypatch):
    """Each test its own user cache dir: the test-look record there is keyed by a split's content, and every
    test scores the same synthetic split."""
    monkeypatch.setenv("MUFFIN_CACHE_DIR", str(tmp_path_factory.mktemp("user-cache")))


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


@pytest.fixture(scope="session")
def tiny_cv_data(synthetic_data_dir, tmp_path_factory):
    """(cache, folds): the synthetic training split cached at 32 px greyscale and its 2-fold twin-grouped
    plan, for the tests of how trials run (serial, worker processes, Ray)."""
    from muffin_lib.data.cache import load_images
    from muffin_lib.data.splits import plan_for_cache

    work_dir = tmp_path_factory.mktemp("tiny-cv-work")
    cache = load_images(synthetic_data_dir, work_dir, "train", 32, "grayscale", progress=False)
    return cache, plan_for_cache(cache, work_dir, n_splits=2, seed=0).folds


@pytest.fixture
def cv_result():
    """Builds a CVResult of ``config`` with these per-fold losses (400 training / 100 held-out images per
    fold), as cross_validate would return it, for tests of what is computed from CV results."""
    from muffin_lib.selection.cv import CVResult
    from muffin_lib.selection.stats import summarize_losses

    def make(config, losses, plan_key="plan"):
        return CVResult(config=config, config_key=config.key(), plan_key=plan_key, losses=list(losses),
                        summary=summarize_losses(losses, test_train_ratio=0.25), trials=[], n_train=400.0,
                        n_test=100.0, seconds=0.0)

    return make
