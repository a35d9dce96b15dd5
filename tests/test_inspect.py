"""``privfer data inspect``: counts on the real FER2013/FER+ copies, and duplicate/size accounting on a tiny set."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from privfer.cli import main
from privfer.data.inspect import inspect_dataset, render_text

FER2013_TRAIN = {"anger": 3995, "disgust": 436, "fear": 4097, "happiness": 7215, "neutral": 4965,
                 "sadness": 4830, "surprise": 3171}


@pytest.fixture(scope="module")
def cli_json():
    """Run ``privfer data inspect SPEC --json`` once per spec in this module (the first run builds the cache)."""
    reports: dict[str, dict] = {}

    def run(spec: str, capsys) -> dict:
        if spec not in reports:
            code = main(["data", "inspect", spec, "--json"])
            out, err = capsys.readouterr()
            assert code == 0, err
            reports[spec] = json.loads(out)  # exactly one JSON object on stdout
        return reports[spec]

    return run


def test_fer2013_real_counts(fer2013_root, cli_json, capsys):
    rep = cli_json(f"fer2013:{fer2013_root}", capsys)
    assert rep["spec"].endswith("@all")
    assert list(rep["splits"]) == ["train", "val"]
    assert rep["splits"]["train"] == {c: FER2013_TRAIN[c] for c in rep["classes"]}
    assert sum(rep["splits"]["train"].values()) == 28_709
    assert sum(rep["splits"]["val"].values()) == 3_589
    assert rep["rows"] == {"train": 28_709, "val": 3_589}
    assert rep["total"] == rep["kept"] == 32_298
    assert rep["unreadable"] == 0 and rep["dropped"] == {}
    assert rep["image_sizes"] == {"48x48": 32_298}
    dup = rep["duplicates"]
    # FER2013 is known to hold identical images, some on both sides of the train/val split.
    assert dup["groups_across_splits"] > 0 and dup["groups_within_split"] > 0
    assert dup["images_in_groups"] >= 2 * dup["groups_within_split"]
    assert set(dup["examples"][0]["splits"]) == {"train", "val"}  # cross-split groups are shown first


def test_fer2013_real_text_rendering(fer2013_root, cli_json, capsys):
    text = render_text(cli_json(f"fer2013:{fer2013_root}", capsys))
    train_line = next(line for line in text.splitlines() if line.strip().startswith("train"))
    assert "28,709" in train_line and "7,215" in train_line
    assert "image sizes: 48x48: 32,298" in text


def test_ferplus_real_rows_vs_kept(ferplus_root, cli_json, capsys):
    rep = cli_json(f"ferplus:{ferplus_root}", capsys)
    # total counts label.csv rows, including faces the majority vote drops (unknown / not-a-face wins).
    assert rep["rows"] == {"train": 28_558, "val": 3_579}
    assert rep["total"] == 28_558 + 3_579
    dropped = sum(rep["dropped"].values())
    assert dropped > 0 and rep["dropped"].get("unknown or not-a-face wins", 0) > 0
    assert rep["kept"] == rep["total"] - dropped - rep["unreadable"]
    assert rep["kept"] == sum(sum(c.values()) for c in rep["splits"].values())
    assert sum(rep["splits"]["train"].values()) < 28_558
    assert len(rep["classes"]) == 8 and rep["splits"]["train"]["contempt"] > 0


def test_inspect_duplicates_sizes_and_unreadable(tmp_path):
    rng = np.random.default_rng(1)
    a, b, c = (rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(3))
    files = {"train/happy/a1.png": a, "train/happy/a2.png": a, "train/sad/a3.png": a,  # 3 copies in train
             "val/happy/a4.png": a,                                                    # ...and one in val
             "train/sad/b.png": b, "val/sad/c1.png": c, "val/sad/c2.png": c,
             "val/sad/big.png": rng.integers(0, 256, (64, 80), dtype=np.uint8)}
    for name, img in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / name), img)
    (tmp_path / "val" / "sad" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rep = inspect_dataset(f"folder:{tmp_path}")
    assert rep["rows"] == {"train": 4, "val": 5}
    assert rep["total"] == 9 and rep["kept"] == 8 and rep["unreadable"] == 1
    assert rep["splits"]["train"] == {"happiness": 2, "sadness": 2}
    assert rep["splits"]["val"] == {"happiness": 1, "sadness": 3}
    assert rep["image_sizes"] == {"48x48": 7, "64x80": 1}
    assert rep["duplicates"]["groups_within_split"] == 2  # a in train, c in val
    assert rep["duplicates"]["images_in_groups"] == 5
    assert rep["duplicates"]["groups_across_splits"] == 1  # a in train and val
    first = rep["duplicates"]["examples"][0]
    assert first["splits"] == {"train": 3, "val": 1}
    assert {Path(s).parent.parent.name for s in first["sources"]} == {"train", "val"}
    only_val = inspect_dataset(f"folder:{tmp_path}@val")
    assert list(only_val["splits"]) == ["val"] and only_val["duplicates"]["groups_across_splits"] == 0
