"""Shared test fixtures: the real data in ../shared (skipped cleanly where absent) and small helpers."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FER2013 = SHARED / "fer2013"
FERPLUS = SHARED / "ferplus"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session writes its preprocessing cache under a temporary folder, never in $HOME."""
    monkeypatch.setenv("PRIVFER_CACHE", str(tmp_path_factory.getbasetemp() / "privfer-cache"))


@pytest.fixture
def fer2013_root() -> Path:
    if not (FER2013 / "train").is_dir():
        pytest.skip("../shared/data/fer2013 not present")
    return FER2013


@pytest.fixture
def ferplus_root() -> Path:
    if not (FERPLUS / "FER2013Train" / "label.csv").is_file():
        pytest.skip("../shared/data/ferplus not present")
    return FERPLUS


def write_fer_folder(root: Path, n_train: int = 20, n_val: int = 8, seed: int = 0, classes=None) -> Path:
    """Write a tiny FER2013 image-folder dataset with learnable synthetic faces (a class-dependent pattern)."""
    import cv2
    import numpy as np

    classes = classes or ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    rng = np.random.default_rng(seed)
    k = 0
    for split, top, prefix, n in (("train", "train", "Training", n_train), ("val", "test", "PublicTest", n_val)):
        for ci, c in enumerate(classes):
            d = root / top / c
            d.mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                img = rng.integers(0, 60, (48, 48)).astype(np.uint8)
                img[ci * 6:ci * 6 + 6, :] += 150  # class stripe
                cv2.imwrite(str(d / f"{prefix}_{k:08d}.jpg"), img)
                k += 1
    return root


@pytest.fixture
def tiny_fer(tmp_path) -> Path:
    return write_fer_folder(tmp_path / "tinyfer")
