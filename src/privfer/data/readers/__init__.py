"""Dataset readers, one module per dataset layout, registered by kind name.

A reader is ``read(root: Path, split: str, labels: str) -> ReadResult``; ``split`` is
``train|val|test|all`` and ``labels`` is ``majority`` or ``votes`` (vote distributions where the
dataset has them). Readers only list files and parse label files; pixels decode lazily.
"""
from __future__ import annotations

from typing import Callable
from pathlib import Path

from ...errors import PrivferError
from ..sample import ReadResult
from ..spec import DatasetSpec, parse_spec

Reader = Callable[[Path, str, str], ReadResult]
READERS: dict[str, Reader] = {}


def register(kind: str) -> Callable[[Reader], Reader]:
    def deco(fn: Reader) -> Reader:
        READERS[kind] = fn
        return fn
    return deco


def read_dataset(spec: str | DatasetSpec, labels: str = "majority") -> ReadResult:
    """Read the samples named by a spec (string or :class:`DatasetSpec`)."""
    spec = parse_spec(spec)
    if labels not in ("majority", "votes"):
        raise PrivferError(f"unknown label mode {labels!r}; known: majority, votes")
    if not spec.path.exists():
        raise PrivferError(f"{spec.path}: dataset path does not exist")
    return READERS[spec.kind](spec.path, spec.split, labels)


# Import reader modules so they register themselves.
from . import fer2013, ferplus  # noqa: E402,F401

try:  # readers added by later modules register here too
    from . import affectnet, expw, rafdb, ckplus, jaffe, folder  # noqa: F401
except ImportError:  # pragma: no cover - during development only
    pass
