"""AffectNet: the official ``training.csv``/``validation.csv`` file lists, or ``<split>/<class>/`` folders.

File lists (in root or ``Manually_Annotated_file_lists/``) have the columns ``subDirectory_filePath,
face_x, face_y, face_width, face_height, facial_landmarks, expression, valence, arousal``; paths are
relative to ``Manually_Annotated_Images/`` (in root or ``Manually_Annotated/``) or to root.
training.csv is ``train``, validation.csv is ``val``; AffectNet has no public test set. Expressions
0-7 are kept; 8 (None), 9 (Uncertain) and 10 (Non-Face) are dropped and counted.
The 68 landmarks become 5 points (eye centres, nose tip, mouth corners) for alignment.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ...errors import PrivferError
from ...taxonomy import CLASSES
from ..image import IMAGE_SUFFIXES
from ..sample import ReadResult, Sample
from . import register
from ._util import (check_split, code_label, csv_rows, first_existing, folder_label, header_matches,
                    read_class_folders, require_file, split_folders, to_int)

HEADER = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
          "expression", "valence", "arousal")
LIST_FILES = {"train": "training.csv", "val": "validation.csv"}
LIST_DIRS = (".", "Manually_Annotated_file_lists")
IMAGE_DIRS = ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images")
#: Expression codes that are not an expression class.
DROPPED_CODES = {8: "None", 9: "Uncertain", 10: "Non-Face"}
NO_TEST = "AffectNet has no public test set"


#: 68-point indices (0-based) averaged into each of the 5 alignment points.
FIVE_POINTS = (range(36, 42), range(42, 48), (30,), (48,), (54,))


def five_points(text: str, where: str) -> np.ndarray | None:
    """(5, 2) landmarks from the 68-point ``x;y;x;y;...`` string (None when the field is empty)."""
    v = text.strip().strip(";").split(";")
    if v == [""]:
        return None
    if len(v) != 136:
        raise PrivferError(f"{where}: facial_landmarks must hold 68 x;y points (136 numbers), got {len(v)}")
    try:  # only the 15 points used are converted: the 136 floats of 287k rows would be slow
        return np.array([[sum(float(v[2 * i + k]) for i in idx) / len(idx) for k in (0, 1)] for idx in FIVE_POINTS],
                        np.float32)
    except ValueError:
        raise PrivferError(f"{where}: facial_landmarks must be numbers") from None


def _image_base(root: Path, first_path: str) -> Path:
    """The folder the csv paths are relative to (``Manually_Annotated_Images/`` or root), judged by the first path."""
    images = first_existing(root, IMAGE_DIRS, want_dir=True)
    if images is not None and (images / first_path).exists():
        return images
    if (root / first_path).exists():
        return root
    if images is None:
        raise PrivferError(f"{root}: missing folder Manually_Annotated_Images/ (and {first_path} is not under root)")
    return images  # individual missing files are counted as unreadable by the cache


def read_list(path: Path, split: str, root: Path, dropped: Counter) -> list[Sample]:
    """Samples from one AffectNet file list (header optional, as some copies of validation.csv lack it)."""
    samples: list[Sample] = []
    base: Path | None = None
    first = True
    for lineno, row in csv_rows(path):
        if first and Path(row[0]).suffix.lower() not in IMAGE_SUFFIXES:  # a header, not a data row
            first = False
            if not header_matches(row, HEADER):
                raise PrivferError(f"{path}: expected header {','.join(HEADER)}, got {','.join(row)[:80]!r}")
            continue
        first = False
        where = f"{path}:{lineno}"
        if len(row) != len(HEADER):
            raise PrivferError(f"{where}: expected {len(HEADER)} columns ({','.join(HEADER)}), got {len(row)}")
        if base is None:
            base = _image_base(root, row[0])
        code = to_int(row[6], where, "expression")
        if code in DROPPED_CODES:
            dropped[f"expression {DROPPED_CODES[code]} ({code})"] += 1
            continue
        label = code_label(code, "affectnet", where)
        x, y, w, h = (to_int(row[i], where, HEADER[i]) for i in range(1, 5))
        box = (x, y, w, h) if w > 0 and h > 0 else None
        samples.append(Sample(str(base / row[0]), label, split, box=box, landmarks=five_points(row[5], where)))
    return samples


def _folder_label(folder: Path) -> str:
    """Class folder named like a class (``happy``) or by AffectNet code (``1``)."""
    if folder.name.isdigit():
        return code_label(int(folder.name), "affectnet", str(folder))
    return folder_label(folder)


@register("affectnet")
def read(root: Path, split: str, labels: str) -> ReadResult:
    lists = next((root / d for d in LIST_DIRS if any((root / d / f).is_file() for f in LIST_FILES.values())), None)
    if lists is None:
        if root.is_dir() and split_folders(root):
            return ReadResult(read_class_folders(root, split, "AffectNet", _folder_label), CLASSES)
        raise PrivferError(f"{root}: no training.csv/validation.csv (AffectNet file lists) and no train/ val/ "
                           "test/ class folders")
    dropped: Counter = Counter()
    samples: list[Sample] = []
    for s in check_split(root, "AffectNet", split, tuple(LIST_FILES), note=NO_TEST):
        path = lists / LIST_FILES[s]
        if split == "all" and not path.is_file():
            continue
        samples += read_list(require_file(path, f"AffectNet {s} file list"), s, root, dropped)
    return ReadResult(samples, CLASSES, dropped)

