"""Any class-folder tree: ``<root>/<class>/<image>`` or ``<root>/<train|val|test>/<class>/<image>``.

Class folder names are mapped by :func:`privfer.taxonomy.canonical` (``angry``, ``Happy``, ...); an
unknown name is an error. Without split folders the only split is ``all``.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import PrivferError
from ..sample import ReadResult
from . import register
from ._util import present_classes, read_class_folders


@register("folder")
def read(root: Path, split: str, labels: str) -> ReadResult:
    if not root.is_dir():
        raise PrivferError(f"{root}: not a folder (expected <class>/<image> or <split>/<class>/<image>)")
    samples = read_class_folders(root, split, "folder dataset")
    return ReadResult(samples, present_classes(samples))
