"""FER2013: the image-folder layout (``train/<class>/Training_*.jpg``, ``test/<class>/PublicTest_*.jpg``)."""
from __future__ import annotations

from pathlib import Path

from ...errors import PrivferError
from ...taxonomy import CLASSES_7, canonical
from ..image import IMAGE_SUFFIXES
from ..sample import ReadResult, Sample
from . import register

#: File-name prefix -> split. PrivateTest is the standard test set, PublicTest the validation set.
PREFIX_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}


def _split_of(name: str) -> str | None:
    return PREFIX_SPLIT.get(name.split("_", 1)[0])


def read_folder_layout(root: Path, split: str) -> ReadResult:
    """Read ``<root>/<train|test>/<class>/<Prefix>_<n>.jpg``; the split comes from the file-name prefix."""
    tops = [d for d in (root / "train", root / "test") if d.is_dir()]
    if not tops:
        raise PrivferError(f"{root}: no train/ or test/ folder (FER2013 image-folder layout)")
    samples: list[Sample] = []
    for top in tops:
        for cdir in sorted(p for p in top.iterdir() if p.is_dir()):
            label = canonical(cdir.name)
            for f in sorted(cdir.iterdir()):
                if f.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                s = _split_of(f.name)
                if s is None:
                    s = "train" if top.name == "train" else "val"
                if split in (s, "all"):
                    samples.append(Sample(str(f), label, s))
    return ReadResult(samples, CLASSES_7)


@register("fer2013")
def read(root: Path, split: str, labels: str) -> ReadResult:
    """FER2013 in either layout: ``fer2013.csv`` (file or inside root) or the image folders."""
    csv = root if root.is_file() else root / "fer2013.csv"
    if csv.is_file():
        from .fer2013_csv import read_csv  # the CSV layout

        return read_csv(csv, split)
    if root.is_dir():
        return read_folder_layout(root, split)
    raise PrivferError(f"{root}: not a FER2013 CSV or image folder")
