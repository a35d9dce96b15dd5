"""Preprocessing cache: decode and crop a dataset once into a compact uint8 array file.

The file (``.npz``, no pickled objects) holds pixels, labels, vote distributions, splits, content
hashes and sources. Its name is keyed by the dataset files (names, sizes, mtimes), the labels and
the preprocessing settings, so a changed file or setting rebuilds it. It is written atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import PrivferError
from ..faces.align import align_face
from .image import to_gray
from .readers import read_dataset
from .spec import DatasetSpec, parse_spec

CACHE_VERSION = 2  # 2: orig_sizes


def cache_dir() -> Path:
    """``$PRIVFER_CACHE`` or ``~/.cache/privfer``."""
    return Path(os.environ.get("PRIVFER_CACHE", Path.home() / ".cache" / "privfer"))


def content_hash(pixels: np.ndarray) -> str:
    """128-bit BLAKE2b of decoded pixels (shape included): equal images, equal hashes, whatever the file format."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(pixels.shape).encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


@dataclass
class FaceSet:
    """A preprocessed dataset in memory: ``pixels`` uint8 [N, S, S], ``labels`` int64 [N] indexing ``classes``."""

    pixels: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    hashes: np.ndarray
    sources: np.ndarray
    classes: tuple[str, ...]
    votes: np.ndarray | None = None
    subjects: np.ndarray | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    spec: str = ""
    #: int32 [N, 2]: (height, width) of each decoded image before cropping (None for old caches)
    orig_sizes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> "FaceSet":
        """Rows ``idx`` (indices or a boolean mask) as a new FaceSet."""
        return FaceSet(
            self.pixels[idx], self.labels[idx], self.split[idx], self.hashes[idx], self.sources[idx],
            self.classes, None if self.votes is None else self.votes[idx],
            None if self.subjects is None else self.subjects[idx], dict(self.dropped), self.spec,
            None if self.orig_sizes is None else self.orig_sizes[idx],
        )

    def unique(self) -> "FaceSet":
        """The first example of each distinct image (content hash), in order; ``dropped["duplicate image"]``
        counts the others."""
        _, first = np.unique(self.hashes, return_index=True)
        out = self.subset(np.sort(first))
        if len(out) < len(self):
            out.dropped["duplicate image"] = out.dropped.get("duplicate image", 0) + len(self) - len(out)
        return out

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels[self.labels >= 0], minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}

    def data_hash(self) -> str:
        """One hash over all content hashes and labels: identifies exactly which data a model saw."""
        h = hashlib.blake2b(digest_size=16)
        h.update("\n".join(self.hashes.tolist()).encode())
        h.update(self.labels.astype(np.int64).tobytes())
        return h.hexdigest()


def _key(spec: DatasetSpec, samples, settings: dict) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"v": CACHE_VERSION, "spec": [spec.kind, str(spec.path.resolve()), spec.split], **settings},
                        sort_keys=True).encode())
    seen_files: set[str] = set()
    for s in samples:
        h.update(f"{s.source}|{s.label}|{s.box}|{s.split}|{s.subject}\n".encode())
        if s.votes is not None:
            h.update(s.votes.tobytes())
        f = s.source.rsplit(":", 1)[0] if s.loader is not None else s.source
        if f not in seen_files:
            seen_files.add(f)
            try:
                st = os.stat(f)
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            except OSError:
                h.update(b"missing")
    return h.hexdigest()


def _write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_faces(spec: DatasetSpec, *, size: int = 48, margin: float = 0.0, labels: str = "majority",
                strict: bool = False, detector=None, progress: bool = False) -> FaceSet:
    """Decode, crop and hash every sample of ``spec`` (no caching). Unreadable images are skipped and
    counted under ``dropped['unreadable image']``, or raise with ``strict``."""
    res = read_dataset(spec, labels=labels)
    if res.needs_detection and detector is None:
        from ..faces.detect import make_detector

        detector = make_detector("haar")
    classes = res.classes
    n = len(res.samples)
    pixels = np.empty((n, size, size), np.uint8)
    keep = np.zeros(n, bool)
    sizes = np.zeros((n, 2), np.int32)
    hashes = [""] * n
    dropped = Counter(res.dropped)
    it = res.samples
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"caching {spec}", unit="img", leave=False)
    for i, s in enumerate(it):
        try:
            img = s.load()
        except PrivferError:
            if strict:
                raise
            dropped["unreadable image"] += 1
            continue
        box, lm = s.box, s.landmarks
        if res.needs_detection:
            faces = detector.detect(img)
            if faces:
                best = max(faces, key=lambda f: f.box[2] * f.box[3])
                box, lm = best.box, best.landmarks
            else:
                dropped["no face detected (whole image used)"] += 1
        gray = to_gray(img)
        sizes[i] = gray.shape
        hashes[i] = content_hash(gray)
        pixels[i] = align_face(gray, box, lm, size=size, margin=margin)
        keep[i] = True
    idx = np.flatnonzero(keep)
    samples = [res.samples[i] for i in idx]
    lab = np.array([classes.index(s.label) if s.label in classes else -1 for s in samples], np.int64)
    votes = None
    if labels == "votes":
        from ..taxonomy import CLASSES

        cols = [CLASSES.index(c) for c in classes]
        votes = np.stack([s.votes[cols] if s.votes is not None else np.eye(len(classes), dtype=np.float32)[l]
                          for s, l in zip(samples, lab)]).astype(np.float32) if samples else np.zeros((0, len(classes)), np.float32)
    return FaceSet(
        pixels=pixels[idx], labels=lab,
        split=np.array([s.split for s in samples], dtype="<U5"),
        hashes=np.array([hashes[i] for i in idx], dtype="<U32"),
        sources=np.array([s.source for s in samples], dtype=str),
        classes=tuple(classes), votes=votes,
        subjects=np.array([s.subject or "" for s in samples], dtype=str),
        dropped=dict(dropped), spec=str(spec), orig_sizes=sizes[idx],
    )


def load_faces(spec: str | DatasetSpec, *, size: int = 48, margin: float = 0.0, labels: str = "majority",
               strict: bool = False, use_cache: bool = True, progress: bool = False) -> FaceSet:
    """Load a dataset split as a :class:`FaceSet`, from the cache when it is up to date.

    Raises PrivferError when the split has no samples.
    """
    spec = parse_spec(spec)
    settings = {"size": size, "margin": margin, "labels": labels}
    if use_cache:
        res = read_dataset(spec, labels=labels)
        path = cache_dir() / f"{spec.kind}-{spec.split}-{_key(spec, res.samples, settings)}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    meta = json.loads(str(z["meta"]))
                    fs = FaceSet(
                        pixels=z["pixels"], labels=z["labels"], split=z["split"], hashes=z["hashes"],
                        sources=z["sources"], classes=tuple(meta["classes"]),
                        votes=z["votes"] if "votes" in z.files else None, subjects=z["subjects"],
                        dropped=meta["dropped"], spec=str(spec),
                        orig_sizes=z["orig_sizes"] if "orig_sizes" in z.files else None,
                    )
                if not strict or not fs.dropped.get("unreadable image"):
                    return _nonempty(fs, spec)
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache file is rebuilt
    fs = build_faces(spec, size=size, margin=margin, labels=labels, strict=strict, progress=progress)
    if use_cache:
        arrays = dict(pixels=fs.pixels, labels=fs.labels, split=fs.split, hashes=fs.hashes, sources=fs.sources,
                      subjects=fs.subjects, meta=np.array(json.dumps({"classes": fs.classes, "dropped": fs.dropped})))
        if fs.votes is not None:
            arrays["votes"] = fs.votes
        if fs.orig_sizes is not None:
            arrays["orig_sizes"] = fs.orig_sizes
        _write_npz_atomic(path, arrays)
    return _nonempty(fs, spec)


def _nonempty(fs: FaceSet, spec: DatasetSpec) -> FaceSet:
    if len(fs) == 0:
        raise PrivferError(f"{spec.path}: split {spec.split!r} of {spec.kind} has no usable samples")
    return fs
