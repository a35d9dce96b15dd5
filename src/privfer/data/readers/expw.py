"""ExpW (Expression in-the-Wild): ``label/label.lst`` face boxes and labels over the ``image/origin/`` photos.

Each label line is ``image_name face_id_in_image face_box_top face_box_left face_box_right
face_box_bottom face_box_cofidence expression_label`` (one line per face; a photo can hold several).
Labels 0-6 are angry, disgust, fear, happy, sad, surprise, neutral. ExpW has no official split.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import PrivferError
from ...taxonomy import CLASSES_7
from ..sample import ReadResult, Sample
from . import register
from ._util import check_split, code_label, first_existing, text_lines, to_int

LABEL_FILES = ("label/label.lst", "label.lst")
IMAGE_DIRS = ("image/origin", "origin")


@register("expw")
def read(root: Path, split: str, labels: str) -> ReadResult:
    check_split(root, "ExpW", split, ("all",), note="ExpW has no official split")
    lst = first_existing(root, LABEL_FILES, want_dir=False)
    if lst is None:
        raise PrivferError(f"{root}: missing label/label.lst (ExpW labels)")
    images = first_existing(root, IMAGE_DIRS, want_dir=True)
    if images is None:
        raise PrivferError(f"{root}: missing folder image/origin/ (ExpW images)")
    samples: list[Sample] = []
    for lineno, line in text_lines(lst):
        where = f"{lst}:{lineno}"
        f = line.split()
        if len(f) != 8:
            raise PrivferError(f"{where}: expected 8 fields (image face_id top left right bottom confidence label), "
                               f"got {len(f)}")
        top, left, right, bottom = (to_int(v, where, name) for v, name in zip(f[2:6], ("top", "left", "right", "bottom")))
        if right <= left or bottom <= top:
            raise PrivferError(f"{where}: empty face box (top {top}, left {left}, right {right}, bottom {bottom})")
        label = code_label(to_int(f[7], where, "expression_label"), "expw", where)
        samples.append(Sample(str(images / f[0]), label, "all", box=(left, top, right - left, bottom - top)))
    return ReadResult(samples, CLASSES_7)
