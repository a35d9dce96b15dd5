"""JAFFE: whole 256x256 photos named ``KA.AN1.39.tiff`` (subject, expression code + repeat, photo number).

Images may sit in subfolders and be TIFF or JPEG; other files (README, ...) are ignored. The faces
are not cropped, so the result asks the cache to run a face detector. There is no split.
"""
from __future__ import annotations

import re
from pathlib import Path

from ...errors import PrivferError
from ...taxonomy import CLASSES_7
from ..image import IMAGE_SUFFIXES
from ..sample import ReadResult, Sample
from . import register
from ._util import check_split, code_label

#: SUBJECT.CODE<repeat>.<number>.<ext>, e.g. KA.AN1.39.tiff
NAME = re.compile(r"^(?P<subject>[A-Za-z]+)\.(?P<code>[A-Za-z]+)\d*\.\d+\.[A-Za-z]+$")


@register("jaffe")
def read(root: Path, split: str, labels: str) -> ReadResult:
    check_split(root, "JAFFE", split, ("all",), note="JAFFE has no official split; split by subject")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    samples: list[Sample] = []
    for f in files:
        m = NAME.match(f.name)
        if m is None or f.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        label = code_label(m["code"], "jaffe", str(f))
        samples.append(Sample(str(f), label, "all", subject=m["subject"].upper()))
    if not samples:
        raise PrivferError(f"{root}: no JAFFE images (names like KA.AN1.39.tiff)")
    return ReadResult(samples, CLASSES_7, needs_detection=True)
