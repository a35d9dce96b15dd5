"""FER+: Microsoft's generated layout ``FER2013Train|FER2013Valid|FER2013Test/`` with ``label.csv``.

Each ``label.csv`` row is ``file,"(x, y, w, h)",neutral,happiness,surprise,sadness,anger,disgust,fear,
contempt,unknown,NF`` (10 annotator votes). Majority labels drop faces where unknown or not-a-face
wins (counted in ``dropped``); ``labels="votes"`` keeps the vote distribution over the 8 classes.
"""
from __future__ import annotations

import csv as _csv
from collections import Counter
from pathlib import Path

import numpy as np

from ...errors import PrivferError
from ...taxonomy import CLASSES
from ..sample import ReadResult, Sample
from . import register

FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
VOTE_COLUMNS = list(CLASSES) + ["unknown", "not_a_face"]


def parse_box(text: str, where: str) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in text.strip().strip("()").split(","))
    except ValueError:
        raise PrivferError(f"{where}: bad face box {text!r}, expected '(x, y, w, h)'") from None
    return x, y, w, h


def votes_to_label(votes: np.ndarray, dropped: Counter) -> str | None:
    """Majority class of a 10-column vote row, or None (and a drop count) if unknown/not-a-face wins or ties lead."""
    if votes.sum() <= 0:
        dropped["no votes"] += 1
        return None
    top = int(np.argmax(votes))
    if top >= len(CLASSES):
        dropped["unknown or not-a-face wins"] += 1
        return None
    return CLASSES[top]


def read_label_csv(path: Path, split: str, labels: str, dropped: Counter) -> list[Sample]:
    samples: list[Sample] = []
    with open(path, newline="") as fh:
        for lineno, row in enumerate(_csv.reader(fh), 1):
            if not row:
                continue
            if len(row) != 12:
                raise PrivferError(f"{path}:{lineno}: expected 12 columns (file, box, 10 vote counts), got {len(row)}")
            try:
                votes = np.array([float(v) for v in row[2:]], np.float32)
            except ValueError:
                raise PrivferError(f"{path}:{lineno}: vote counts must be numbers") from None
            dist = None
            if labels == "votes":  # keep every face with emotion votes; label = most-voted emotion
                v8 = votes[: len(CLASSES)]
                if v8.sum() <= 0:
                    dropped["no emotion votes"] += 1
                    continue
                dist = v8 / v8.sum()
                label = CLASSES[int(np.argmax(v8))]
            else:
                label = votes_to_label(votes, dropped)
                if label is None:
                    continue
            box = parse_box(row[1], f"{path}:{lineno}")
            samples.append(Sample(str(path.parent / row[0]), label, split, votes=dist, box=box))
    return samples


@register("ferplus")
def read(root: Path, split: str, labels: str) -> ReadResult:
    splits = list(FOLDERS) if split == "all" else [split]
    dropped: Counter = Counter()
    samples: list[Sample] = []
    found = False
    for s in splits:
        if s not in FOLDERS:
            raise PrivferError(f"{root}: FER+ has no split {s!r}; known: {', '.join(FOLDERS)}")
        lab = root / FOLDERS[s] / "label.csv"
        if lab.is_file():
            found = True
            samples += read_label_csv(lab, s, labels, dropped)
        elif split != "all":
            if (root / "fer2013new.csv").is_file():
                from .ferplus_csv import read_new_csv  # fer2013new.csv beside fer2013.csv

                return read_new_csv(root, split, labels)
            raise PrivferError(f"{lab}: missing (FER+ layout needs {FOLDERS[s]}/label.csv)")
    if not found:
        if (root / "fer2013new.csv").is_file():
            from .ferplus_csv import read_new_csv

            return read_new_csv(root, split, labels)
        raise PrivferError(f"{root}: no FER2013Train/label.csv or fer2013new.csv (FER+ layouts)")
    return ReadResult(samples, CLASSES, dropped)
