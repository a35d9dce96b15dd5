"""Parse dataset specs of the form ``KIND:PATH[@SPLIT]`` (e.g. ``fer2013:../shared/data/fer2013@train``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import PrivferError

SPLITS = ("train", "val", "test", "all")


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset on disk: reader kind, root path, and split (``train|val|test|all``)."""

    kind: str
    path: Path
    split: str = "train"

    def with_split(self, split: str) -> "DatasetSpec":
        return DatasetSpec(self.kind, self.path, split)

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}@{self.split}"


def parse_spec(text: str | DatasetSpec, default_split: str = "train") -> DatasetSpec:
    """Parse ``KIND:PATH[@SPLIT]``; the kind must be a registered reader and the path must exist."""
    if isinstance(text, DatasetSpec):
        return text
    from .readers import READERS

    if ":" not in text:
        raise PrivferError(f"dataset spec {text!r} must look like KIND:PATH[@SPLIT], kinds: {', '.join(sorted(READERS))}")
    kind, rest = text.split(":", 1)
    kind = kind.strip().lower()
    if kind not in READERS:
        raise PrivferError(f"unknown dataset kind {kind!r} in {text!r}; known: {', '.join(sorted(READERS))}")
    split = default_split
    if "@" in rest:
        rest, split = rest.rsplit("@", 1)
    split = split.strip().lower()
    if split not in SPLITS:
        raise PrivferError(f"unknown split {split!r} in {text!r}; known: {', '.join(SPLITS)}")
    path = Path(rest).expanduser()
    if not path.exists():
        raise PrivferError(f"{path}: dataset path does not exist")
    return DatasetSpec(kind, path, split)
