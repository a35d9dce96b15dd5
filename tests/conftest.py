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
