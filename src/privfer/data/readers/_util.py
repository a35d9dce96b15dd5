"""Helpers shared by the dataset readers: split checks, required files, label parsing, class-folder trees."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from ...errors import PrivferError
from ...taxonomy import CLASSES, canonical
from ..image import IMAGE_SUFFIXES
from ..sample import Sample

#: Folder names accepted for each split in ``<root>/<split>/<class>/`` layouts.
SPLIT_DIRS: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}


def check_split(root: Path, dataset: str, split: str, known: Sequence[str], note: str = "") -> list[str]:
    """The splits to read for ``split``: every known one for ``all``, else ``[split]`` if the dataset has it.

    ``known`` lists the dataset's splits in order; ``("all",)`` means the dataset has no split at all.
    Raises PrivferError naming the root and the known splits.
    """
    known = list(known)
    if split == "all":
        return known
    if split in known:
        return [split]
    names = known if known == ["all"] else [*known, "all"]
    extra = f" ({note})" if note else ""
    raise PrivferError(f"{root}: {dataset} has no split {split!r}{extra}; known: {', '.join(names)}")


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise PrivferError(f"{path}: missing ({what})")
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise PrivferError(f"{path}: missing folder ({what})")
    return path


def first_existing(root: Path, candidates: Iterable[str], want_dir: bool) -> Path | None:
    """The first ``root / c`` that exists as a folder (``want_dir``) or a file."""
    for c in candidates:
        p = root / c
        if (p.is_dir() if want_dir else p.is_file()):
            return p
    return None


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, stripped line)`` for each non-blank line of a text label file."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.strip()
                if line:
                    yield lineno, line
    except UnicodeDecodeError:
        raise PrivferError(f"{path}: not a text file (cannot decode as UTF-8)") from None
    except OSError as e:
        raise PrivferError(f"{path}: cannot read file ({e.strerror or e})") from None


def csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` for each non-empty row of a CSV file (fields stripped)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            try:
                for row in reader:
                    if row and any(f.strip() for f in row):
                        yield reader.line_num, [f.strip() for f in row]
            except csv.Error as e:
                raise PrivferError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    except UnicodeDecodeError:
        raise PrivferError(f"{path}: not a text file (cannot decode as UTF-8)") from None
    except OSError as e:
        raise PrivferError(f"{path}: cannot read file ({e.strerror or e})") from None


def header_matches(row: Sequence[str], expected: Sequence[str]) -> bool:
    """Case-insensitive comparison of a CSV header row with the expected column names."""
    return [c.strip().strip('"').lower() for c in row] == [c.lower() for c in expected]


def to_int(text: str, where: str, what: str) -> int:
    """Parse an integer field (``"12"`` or ``"12.0"``); PrivferError naming ``where`` otherwise."""
    try:
        v = float(text)
    except ValueError:
        raise PrivferError(f"{where}: {what} must be a number, got {text!r}") from None
    if v != int(v):
        raise PrivferError(f"{where}: {what} must be a whole number, got {text!r}")
    return int(v)


def code_label(code: object, dataset: str, where: str) -> str:
    """Canonical class of a dataset code, with ``where`` (file:line or file) in the error."""
    try:
        return canonical(code, dataset=dataset)
    except PrivferError as e:
        raise PrivferError(f"{where}: {e}") from None


def folder_label(folder: Path) -> str:
    """Canonical class of a class folder's name, with the folder in the error."""
    try:
        return canonical(folder.name)
    except PrivferError as e:
        raise PrivferError(f"{folder}: {e}") from None


def present_classes(samples: Iterable[Sample]) -> tuple[str, ...]:
    """The canonical classes used by ``samples``, in canonical order."""
    used = {s.label for s in samples}
    return tuple(c for c in CLASSES if c in used)


def _visible(p: Path) -> bool:
    return not p.name.startswith((".", "__"))


def image_files(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder`` (hidden files and folders skipped), sorted."""
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        and all(_visible(Path(part)) for part in p.relative_to(folder).parts)
    )


def split_folders(root: Path) -> dict[str, Path]:
    """``{split: folder}`` for the ``train/ val/ test/`` folders (or their aliases) present in ``root``."""
    found: dict[str, Path] = {}
    for split, names in SPLIT_DIRS.items():
        d = first_existing(root, names, want_dir=True)
        if d is not None:
            found[split] = d
    return found


def read_class_tree(top: Path, split: str, label_of: Callable[[Path], str] = folder_label,
                    subject_of: Callable[[Path], str | None] | None = None) -> list[Sample]:
    """Samples from ``<top>/<class>/**/<image>``; ``label_of`` maps a class folder to a canonical name."""
    if not top.is_dir():
        raise PrivferError(f"{top}: not a folder (expected <class>/<image> inside)")
    class_dirs = sorted(p for p in top.iterdir() if p.is_dir() and _visible(p))
    if not class_dirs:
        raise PrivferError(f"{top}: no class folders (expected <class>/<image> inside)")
    samples: list[Sample] = []
    for cdir in class_dirs:
        label = label_of(cdir)
        for f in image_files(cdir):
            samples.append(Sample(str(f), label, split, subject=subject_of(f) if subject_of else None))
    return samples


def read_class_folders(root: Path, split: str, dataset: str, label_of: Callable[[Path], str] = folder_label,
                       subject_of: Callable[[Path], str | None] | None = None) -> list[Sample]:
    """``<root>/<train|val|test>/<class>/...`` when split folders exist, else ``<root>/<class>/...`` (split ``all``)."""
    tops = split_folders(root)
    if tops:
        splits = check_split(root, dataset, split, list(tops))
        return [s for sp in splits for s in read_class_tree(tops[sp], sp, label_of, subject_of)]
    check_split(root, dataset, split, ("all",), note="no train/ val/ test/ folders")
    return read_class_tree(root, "all", label_of, subject_of)
