"""CK+ in the common CK+48 layout: ``<root>/<class>/S010_004_00000017.png``, subject = part before the first ``_``.

Classes are anger, contempt, disgust, fear, happy, sadness, surprise (no neutral). There is no split.
"""
from __future__ import annotations

from pathlib import Path

from ..sample import ReadResult
from . import register
from ._util import check_split, present_classes, read_class_tree


def subject_of(path: Path) -> str | None:
    """``S010`` for ``S010_004_00000017.png``; None for names without a subject prefix."""
    return path.name.split("_", 1)[0] if "_" in path.name else None


@register("ckplus")
def read(root: Path, split: str, labels: str) -> ReadResult:
    check_split(root, "CK+", split, ("all",), note="CK+ has no official split; split by subject")
    samples = read_class_tree(root, "all", subject_of=subject_of)
    return ReadResult(samples, present_classes(samples))
