"""FER+ as ``fer2013new.csv``: vote rows aligned line by line with ``fer2013.csv``, which holds the pixels.

Row i of fer2013new.csv labels row i of fer2013.csv. Rows with an empty ``Image name`` are faces FER+
discarded; they are dropped and counted.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ...errors import PrivferError
from ...taxonomy import CLASSES
from ..sample import ReadResult, Sample
from ._util import check_split, csv_rows, header_matches, require_file
from .fer2013_csv import USAGE_SPLIT, pixel_loader, scan_rows
from .ferplus import VOTE_COLUMNS, votes_to_label

HEADER = ("Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
          "contempt", "unknown", "NF")
DISCARDED = "discarded by FER+ (empty Image name)"


def read_new_csv(root: Path, split: str, labels: str) -> ReadResult:
    """Samples of ``split`` from ``root/fer2013new.csv`` with pixels from ``root/fer2013.csv``."""
    new = require_file(root / "fer2013new.csv", "FER+ labels")
    base = require_file(root / "fer2013.csv", "fer2013new.csv labels its rows, so it must sit beside it")
    wanted = set(check_split(root, "FER+", split, ("train", "val", "test")))
    base_rows, base_has_usage = scan_rows(base)
    dropped: Counter = Counter()
    samples: list[Sample] = []
    n = 0  # data rows seen = index of the aligned fer2013.csv row
    header_seen = False
    for lineno, row in csv_rows(new):
        if not header_seen:
            if not header_matches(row, HEADER):
                raise PrivferError(f"{new}: expected header {','.join(HEADER)}, got {','.join(row)[:80]!r}")
            header_seen = True
            continue
        where = f"{new}:{lineno}"
        if len(row) != len(HEADER):
            raise PrivferError(f"{where}: expected {len(HEADER)} columns, got {len(row)}")
        if n >= len(base_rows):
            raise PrivferError(f"{where}: more rows than {base} ({len(base_rows)}); the files must be aligned row by row")
        b = base_rows[n]
        n += 1
        s = USAGE_SPLIT.get(row[0], "")
        if not s:
            raise PrivferError(f"{where}: unknown Usage {row[0]!r}; known: {', '.join(USAGE_SPLIT)}")
        if base_has_usage and s != b.split:
            raise PrivferError(f"{where}: Usage {row[0]!r} differs from {base}:{b.lineno}; the files are not aligned")
        if s not in wanted:
            continue
        if not row[1]:
            dropped[DISCARDED] += 1
            continue
        try:
            votes = np.array([float(v) for v in row[2:]], np.float32)
        except ValueError:
            raise PrivferError(f"{where}: vote counts ({', '.join(VOTE_COLUMNS)}) must be numbers") from None
        dist = None
        if labels == "votes":
            label = votes_to_label(votes, Counter())  # majority kept for reference; drops counted below
            v8 = votes[: len(CLASSES)]
            if v8.sum() <= 0:
                dropped["no votes for any expression"] += 1
                continue
            dist = v8 / v8.sum()
        else:
            label = votes_to_label(votes, dropped)
            if label is None:
                continue
        samples.append(Sample(f"{base}:{b.lineno}", label, s, votes=dist, loader=pixel_loader(base, b)))
    if n != len(base_rows):
        raise PrivferError(f"{new}: {n} data rows but {base} has {len(base_rows)}; the files must be aligned row by row")
    return ReadResult(samples, CLASSES, dropped)
