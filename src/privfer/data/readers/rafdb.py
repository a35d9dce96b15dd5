"""RAF-DB basic emotions: ``EmoLabel/list_patition_label.txt`` over the aligned 100x100 crops in ``Image/aligned/``.

Label lines are ``train_00001.jpg 5``; the image is ``Image/aligned/train_00001_aligned.jpg``. Labels 1-7
are surprise, fear, disgust, happiness, sadness, anger, neutral. The split comes from the name prefix
(train, test); RAF-DB has no validation split.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import PrivferError
from ...taxonomy import CLASSES_7
from ..sample import ReadResult, Sample
from . import register
from ._util import check_split, code_label, require_dir, require_file, text_lines, to_int

LABEL_FILE = "EmoLabel/list_patition_label.txt"  # sic: the real file name
ALIGNED_DIR = "Image/aligned"
SPLITS = ("train", "test")


@register("rafdb")
def read(root: Path, split: str, labels: str) -> ReadResult:
    wanted = set(check_split(root, "RAF-DB", split, SPLITS, note="RAF-DB has no validation split"))
    lst = require_file(root / LABEL_FILE, "RAF-DB basic labels")
    aligned = require_dir(root / ALIGNED_DIR, "RAF-DB aligned 100x100 face crops")
    samples: list[Sample] = []
    for lineno, line in text_lines(lst):
        where = f"{lst}:{lineno}"
        f = line.split()
        if len(f) != 2:
            raise PrivferError(f"{where}: expected 'IMAGE LABEL' (e.g. train_00001.jpg 5), got {line[:60]!r}")
        name, code = f
        s = name.split("_", 1)[0]
        if s not in SPLITS:
            raise PrivferError(f"{where}: image name {name!r} does not start with train_ or test_")
        label = code_label(to_int(code, where, "label"), "rafdb", where)
        if s in wanted:
            samples.append(Sample(str(aligned / f"{Path(name).stem}_aligned.jpg"), label, s))
    return ReadResult(samples, CLASSES_7)
