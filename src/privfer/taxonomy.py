"""Canonical expression classes, every dataset's names for them, and the negative set.

This is the only module where class names live. Everything else asks it.
"""
from __future__ import annotations

from .errors import PrivferError

#: Canonical classes, in FER+ vote order. 7-class models use the first seven.
CLASSES: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
)
#: The seven FER2013 classes (no contempt), canonical order.
CLASSES_7: tuple[str, ...] = CLASSES[:7]
#: Classes whose presence raises the negative score.
NEGATIVE: frozenset[str] = frozenset({"anger", "disgust", "fear", "sadness", "contempt"})

# Names used by folders, papers and datasets (lower-cased) -> canonical.
_ALIASES: dict[str, str] = {
    **{c: c for c in CLASSES},
    "angry": "anger", "anger": "anger",
    "happy": "happiness", "happiness": "happiness", "joy": "happiness",
    "sad": "sadness", "sadness": "sadness",
    "surprised": "surprise", "surprise": "surprise",
    "disgusted": "disgust", "disgust": "disgust",
    "fearful": "fear", "fear": "fear", "scared": "fear",
    "neutral": "neutral", "calm": "neutral",
    "contempt": "contempt", "contemptuous": "contempt",
}

#: Dataset-specific codes -> canonical names.
CODES: dict[str, dict[object, str]] = {
    # FER2013 CSV `emotion` column: 0 Angry 1 Disgust 2 Fear 3 Happy 4 Sad 5 Surprise 6 Neutral
    "fer2013": {0: "anger", 1: "disgust", 2: "fear", 3: "happiness", 4: "sadness", 5: "surprise", 6: "neutral"},
    # FER+ vote columns in label.csv / fer2013new.csv order (then unknown, not-a-face)
    "ferplus": dict(enumerate(CLASSES)),
    # AffectNet `expression`: 0 Neutral 1 Happy 2 Sad 3 Surprise 4 Fear 5 Disgust 6 Anger 7 Contempt
    # (8 None, 9 Uncertain, 10 Non-Face are dropped by the reader)
    "affectnet": {0: "neutral", 1: "happiness", 2: "sadness", 3: "surprise", 4: "fear", 5: "disgust", 6: "anger", 7: "contempt"},
    # ExpW label.lst: 0 angry 1 disgust 2 fear 3 happy 4 sad 5 surprise 6 neutral
    "expw": {0: "anger", 1: "disgust", 2: "fear", 3: "happiness", 4: "sadness", 5: "surprise", 6: "neutral"},
    # RAF-DB basic: 1 Surprise 2 Fear 3 Disgust 4 Happiness 5 Sadness 6 Anger 7 Neutral
    "rafdb": {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"},
    # JAFFE file-name codes (KA.AN1.39.tiff)
    "jaffe": {"AN": "anger", "DI": "disgust", "FE": "fear", "HA": "happiness", "NE": "neutral", "SA": "sadness", "SU": "surprise"},
}


def canonical(name: object, dataset: str | None = None) -> str:
    """Map a dataset's class name or code to the canonical class name.

    ``dataset`` selects a code table from :data:`CODES` (integer codes, JAFFE codes);
    without it, ``name`` is looked up as a free-form class name ("angry", "Happy").
    Raises :class:`PrivferError` listing the known names when nothing matches.
    """
    if dataset is not None:
        table = CODES.get(dataset)
        if table is None:
            raise PrivferError(f"unknown dataset code table {dataset!r}; known: {', '.join(sorted(CODES))}")
        key: object = name
        if isinstance(name, str):
            key = int(name) if name.strip().lstrip("-").isdigit() else name.strip().upper()
        if key in table:
            return table[key]
        known = ", ".join(f"{k}={v}" for k, v in table.items())
        raise PrivferError(f"unknown {dataset} class code {name!r}; known: {known}")
    key = str(name).strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    raise PrivferError(f"unknown class name {name!r}; known: {', '.join(sorted(_ALIASES))}")


def class_index(name: str, classes: tuple[str, ...] | list[str] = CLASSES) -> int:
    """Index of canonical ``name`` in ``classes`` (raises PrivferError if absent)."""
    try:
        return list(classes).index(name)
    except ValueError:
        raise PrivferError(f"class {name!r} is not one of {', '.join(classes)}") from None


def negative_mask(classes: tuple[str, ...] | list[str]) -> list[bool]:
    """One bool per class: is it in the negative set?"""
    return [c in NEGATIVE for c in classes]


def validate_classes(classes: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Check a list of canonical names (e.g. from a model card) and return it as a tuple."""
    for c in classes:
        if c not in CLASSES:
            raise PrivferError(f"unknown class name {c!r}; known: {', '.join(CLASSES)}")
    return tuple(classes)
