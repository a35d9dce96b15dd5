"""FER2013 as the original Kaggle CSV: ``emotion,pixels,Usage`` rows of 48x48 space-separated gray values.

Rows are scanned once for their byte offsets and checked (header, emotion code, Usage, pixel count);
each sample's ``loader`` re-reads its own line and decodes the pixels only when asked.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ...errors import PrivferError
from ...taxonomy import CLASSES_7
from ..sample import ReadResult, Sample
from ._util import check_split, code_label, header_matches

HEADER = ("emotion", "pixels", "Usage")
SIDE = 48
#: ``Usage`` value -> split. PublicTest is the usual validation set, PrivateTest the test set.
USAGE_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}


@dataclass(frozen=True)
class CsvRow:
    """One data row of fer2013.csv: where it is in the file, its label and its split."""

    lineno: int
    offset: int
    length: int
    label: str
    split: str


def _fields(line: bytes, path: Path, lineno: int, n: int) -> list[str]:
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise PrivferError(f"{path}:{lineno}: not ASCII text") from None
    fields = [f.strip().strip('"').strip() for f in text.strip().split(",")]
    if len(fields) != n:
        raise PrivferError(f"{path}:{lineno}: expected {n} columns ({','.join(HEADER[:n])}), got {len(fields)}")
    return fields


def _pixel_count(pixels: str) -> int:
    n = pixels.count(" ") + 1 if pixels else 0
    return n if n == SIDE * SIDE else len(pixels.split())  # the fast count is exact unless spacing is odd


def scan_rows(path: Path) -> tuple[list[CsvRow], bool]:
    """Every data row of ``path`` (all splits) and whether the file has a Usage column.

    Without Usage (``emotion,pixels`` copies) every row is ``train``. Raises PrivferError naming
    the file (and line) for a wrong header, column count, emotion code, Usage value or pixel count.
    """
    rows: list[CsvRow] = []
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise PrivferError(f"{path}: cannot read file ({e.strerror or e})") from None
    with fh:
        first = fh.readline()
        head = first.decode("utf-8-sig", "replace").strip().split(",")
        if header_matches(head, HEADER):
            ncol = 3
        elif header_matches(head, HEADER[:2]):
            ncol = 2
        else:
            raise PrivferError(f"{path}: expected header {','.join(HEADER)}, got {first[:60].decode('latin-1').strip()!r}")
        offset = len(first)
        for lineno, line in enumerate(fh, 2):
            length = len(line)
            if line.strip():
                f = _fields(line, path, lineno, ncol)
                where = f"{path}:{lineno}"
                label = code_label(f[0], "fer2013", where)
                n = _pixel_count(f[1])
                if n != SIDE * SIDE:
                    raise PrivferError(f"{where}: expected {SIDE * SIDE} pixel values ({SIDE}x{SIDE}), got {n}")
                split = "train"
                if ncol == 3:
                    split = USAGE_SPLIT.get(f[2], "")
                    if not split:
                        raise PrivferError(f"{where}: unknown Usage {f[2]!r}; known: {', '.join(USAGE_SPLIT)}")
                rows.append(CsvRow(lineno, offset, length, label, split))
            offset += length
    return rows, ncol == 3


def pixel_loader(path: Path, row: CsvRow) -> Callable[[], np.ndarray]:
    """A closure that reads ``row`` from ``path`` and decodes it into a uint8 48x48 array."""

    def load() -> np.ndarray:
        where = f"{path}:{row.lineno}"
        try:
            with open(path, "rb") as fh:
                fh.seek(row.offset)
                line = fh.read(row.length)
        except OSError as e:
            raise PrivferError(f"{where}: cannot read file ({e.strerror or e})") from None
        try:
            with warnings.catch_warnings():  # numpy warns (here: raises) on text it cannot parse
                warnings.simplefilter("error", DeprecationWarning)
                values = np.fromstring(line.decode("ascii").split(",")[1].strip().strip('"'), dtype=np.int64, sep=" ")
        except (UnicodeDecodeError, IndexError, ValueError, DeprecationWarning):
            raise PrivferError(f"{where}: bad pixel values (file changed since it was read?)") from None
        if values.size != SIDE * SIDE or values.min() < 0 or values.max() > 255:
            raise PrivferError(f"{where}: expected {SIDE * SIDE} pixel values in 0..255")
        return values.astype(np.uint8).reshape(SIDE, SIDE)

    return load


def read_csv(csv_path: Path, split: str) -> ReadResult:
    """Samples of ``split`` from ``fer2013.csv`` (source ``file:line``, pixels decoded lazily)."""
    rows, has_usage = scan_rows(csv_path)
    if has_usage:
        wanted = set(check_split(csv_path, "FER2013", split, ("train", "val", "test")))
    else:
        wanted = set(check_split(csv_path, "FER2013", split, ("train",), note="no Usage column: every row is train"))
    samples = [Sample(f"{csv_path}:{r.lineno}", r.label, r.split, loader=pixel_loader(csv_path, r))
               for r in rows if r.split in wanted]
    return ReadResult(samples, CLASSES_7)
