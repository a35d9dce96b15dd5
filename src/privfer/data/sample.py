"""One labelled face image (decoded lazily) and the result of reading a dataset."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Sample:
    """A dataset item. Pixels are decoded only when :meth:`load` is called.

    ``source`` names where the pixels come from (a file path, or ``file.csv:LINE`` for CSV rows),
    ``label`` is a canonical class name (None when only ``votes`` are known),
    ``votes`` a vote distribution over :data:`privfer.taxonomy.CLASSES` (float32, length 8),
    ``box`` a face box ``(x, y, w, h)`` in the image, ``landmarks`` a (5, 2) array when known.
    """

    source: str
    label: str | None
    split: str
    votes: np.ndarray | None = None
    subject: str | None = None
    box: tuple[int, int, int, int] | None = None
    landmarks: np.ndarray | None = None
    loader: Callable[[], np.ndarray] | None = field(default=None, repr=False)

    def load(self) -> np.ndarray:
        """Decode the image: uint8, HxW (grayscale) or HxWx3 (BGR). Raises PrivferError if unreadable."""
        if self.loader is not None:
            return self.loader()
        from .image import read_image

        return read_image(self.source)


@dataclass
class ReadResult:
    """What a reader found: samples of the asked split(s), drop counts by reason, and the dataset's classes."""

    samples: list[Sample]
    classes: tuple[str, ...]
    dropped: Counter = field(default_factory=Counter)
    #: True when images are not face crops and a face detector must find the face (e.g. JAFFE).
    needs_detection: bool = False
