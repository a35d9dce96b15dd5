"""Training on a fixed front-end's features: models with a ``frontend`` (no parameters) and a ``head``.

A fixed front-end (the scattering transform of :mod:`privfer.models.scatter`) gives the same output for
the same face every epoch, so it is computed once per face (and once for its mirror image, the one
augmentation that commutes with caching) and only the head is trained, with or without DP. The
features are kept in float16 on disk in the preprocessing cache directory, keyed by the faces' content
hashes and the front-end, so later runs (other budgets, shadow models of an audit) reuse them.

Augmented views (``aug_views: N``): the features of N randomly transformed copies of every face, each copy
drawn once: the transforms of view j of a face come from a generator seeded with the face's content hash and
j, so a face's view j is the same in every run and every set it is part of, and is cached like the face
itself. Training then draws among the face, its mirror image and these views: more augmentation per epoch
at no cost after the first run.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.cache import cache_dir
from .augment import Augment
from .data import to_input

FEATURES_VERSION = 1

#: The random transforms of augmented view j >= 1 (no flip: the mirror image is a view of its own).
VIEW_AUGMENT = Augment(flip=False)


def mirror_views(frontend: nn.Module, augment: bool) -> bool:
    """Whether training on ``frontend``'s cached features uses mirror images (not for a flip-invariant one)."""
    return bool(augment) and not getattr(frontend, "flip_invariant", False)


def frontend_of(net: nn.Module) -> nn.Module | None:
    """The model's fixed front-end, or None for end-to-end models."""
    fe = getattr(net, "frontend", None)
    if fe is None or getattr(net, "head", None) is None:
        return None
    if any(True for _ in fe.parameters()):
        raise ValueError("a front-end must have no parameters: its features are computed once")
    return fe


def view_copies(x: torch.Tensor, hashes, view: int) -> torch.Tensor:
    """Augmented view ``view`` >= 1 of faces ``x`` [N, 1, S, S] whose content hashes are ``hashes``: each face's
    transforms are drawn from a generator seeded with its hash and ``view`` (the same copy in any batch or set)."""
    out = torch.empty_like(x)
    for i, h in enumerate(hashes):
        seed = int.from_bytes(hashlib.blake2b(f"{h}:{view}".encode(), digest_size=8).digest(), "little") >> 1
        out[i:i + 1] = VIEW_AUGMENT(x[i:i + 1], torch.Generator().manual_seed(seed))
    return out


@torch.no_grad()
def compute(frontend: nn.Module, pixels: np.ndarray, mirror: bool = False, batch: int = 512,
            view: int = 0, hashes=None) -> np.ndarray:
    """float16 features of uint8 faces [N, S, S], mirrored left-right with ``mirror``; with ``view`` >= 1, of
    their augmented view ``view`` (:func:`view_copies`, which needs the faces' content ``hashes``), mirrored
    after the view's transforms."""
    if view and (hashes is None or len(hashes) != len(pixels)):
        raise ValueError("augmented views need one content hash per face")
    frontend.eval()
    out = []
    for i in range(0, len(pixels), batch):
        x = to_input(pixels[i:i + batch])
        if view:
            x = view_copies(x, hashes[i:i + batch], view)
        if mirror:
            x = x.flip(-1)
        out.append(frontend(x).to(torch.float16).numpy())
    return np.concatenate(out) if out else np.zeros((0,), np.float16)


#: Smaller sets (shadow models' halves, tests) are not written to disk: their features are computed in
#: memory and remembered per image view (by content hash) for the life of the process, up to MEMO_BYTES of
#: features, so the many overlapping subsets of an audit's shadow models compute each face (and view) once.
MIN_CACHED = 4096
MEMO_BYTES = 1 << 30
_memo: dict[str, np.ndarray] = {}
_memo_bytes = 0
#: Sets of at least ``min_cached`` faces whose features are cached on disk, per cache directory and key: (row of
#: each content hash, the file's features, memory-mapped). Each file has an index of its faces beside it, so a
#: later set all of whose faces are in such files (a run's deduplicated or split training set, an audit's shadow
#: halves of its population) is gathered from them, not computed again and written as a file of its own.
_known: dict[tuple[str, str], list[tuple[dict[str, int], np.ndarray]]] = {}
_scanned: set[tuple[str, str]] = set()


def _digest(tag: str) -> str:
    return hashlib.blake2b(tag.encode(), digest_size=8).hexdigest()


def _add(tag: str, rows: dict[str, int], feats: np.ndarray) -> None:
    sets = _known.setdefault((str(cache_dir()), tag), [])
    if not any(f.filename == feats.filename for _, f in sets):
        sets.append((rows, feats))


def _remember(tag: str, hashes, path: Path) -> np.ndarray:
    """The features in ``path`` (memory-mapped), remembered as those of the faces ``hashes`` for :func:`_gather`,
    with their index (``index-<key digest>-<name>.json``: the key and the faces' content hashes) written beside
    them if it is not there yet."""
    from ..models.io import write_json_atomic

    feats = np.load(path, mmap_mode="r")
    _add(tag, {str(h): i for i, h in enumerate(hashes)}, feats)
    index = path.with_name(f"index-{_digest(tag)}-{path.stem.removeprefix('features-')}.json")
    if not index.is_file():
        write_json_atomic(index, {"key": tag, "hashes": [str(h) for h in hashes]})
    return feats


def _read_indexes(tag: str) -> None:
    """Remember, once per process, the features files of key ``tag`` that the cache directory's indexes list."""
    root = cache_dir()
    if (str(root), tag) in _scanned:
        return
    _scanned.add((str(root), tag))
    for index in sorted(root.glob(f"index-{_digest(tag)}-*.json")):
        path = root / f"features-{index.stem.split('-', 2)[2]}.npy"
        try:
            entry = json.loads(index.read_text())
            feats = np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            continue  # a missing or damaged file is not used; its faces' features are computed again
        if entry.get("key") == tag and len(entry.get("hashes", ())) == len(feats):
            _add(tag, {h: i for i, h in enumerate(entry["hashes"])}, feats)


def _gather(tag: str, hashes) -> np.ndarray | None:
    """The features of the faces ``hashes`` from the files remembered for key ``tag``, or None if any face is in
    none of them."""
    sets = _known.get((str(cache_dir()), tag))
    if not sets or not len(hashes):
        return None
    keys = [str(h) for h in hashes]
    out, missing = None, np.ones(len(keys), bool)
    for rows, feats in sets:
        idx = np.array([rows.get(k, -1) for k in keys])
        take = missing & (idx >= 0)
        if take.any():
            if out is None:
                out = np.empty((len(keys),) + feats.shape[1:], feats.dtype)
            out[take] = feats[idx[take]]
            missing &= ~take
        if not missing.any():
            return out
    return None


def _key(frontend: nn.Module, mirror: bool, shape, view: int = 0) -> str:
    tag = getattr(frontend, "cache_tag", "")  # which features a configurable front-end computes
    name = f"{type(frontend).__module__}.{type(frontend).__name__}" + (f"-{tag}" if tag else "")
    key = f"{name}:{FEATURES_VERSION}:{mirror}:{tuple(shape)}"
    return key + (f":view{view}:{VIEW_AUGMENT}" if view else "")


def cached(frontend: nn.Module, pixels: np.ndarray, hashes: np.ndarray, mirror: bool = False,
           min_cached: int | None = None, view: int = 0) -> np.ndarray:
    """:func:`compute`, read from (or written atomically to) the cache directory when it was done before.

    Sets of fewer than ``min_cached`` faces (default :data:`MIN_CACHED`) are not written. A set whose faces are
    all in the cache directory's features files (found through their indexes) is gathered from them
    (:func:`_gather`). A flip-invariant front-end that averages an inner one's features of the face and its
    mirror image (``MirrorAverage``) is computed from the inner front-end's cached features of both, and
    front-ends side by side (``StackedFeatures``) from each one's cached features."""
    inner = getattr(frontend, "inner", None)
    if getattr(frontend, "flip_invariant", False) and inner is not None:
        a = cached(inner, pixels, hashes, False, min_cached, view)
        b = cached(inner, pixels, hashes, True, min_cached, view)
        return ((a.astype(np.float32) + b.astype(np.float32)) / 2).astype(np.float16)
    parts = getattr(frontend, "parts", None)
    if parts is not None:  # front-ends side by side (StackedFeatures): each part cached on its own
        feats = [cached(p, pixels, hashes, mirror, min_cached, view) for p in parts]
        if getattr(frontend, "flat", False):  # parts of different shapes, flattened first
            feats = [f.reshape(len(f), -1) for f in feats]
        return np.concatenate(feats, axis=1)
    min_cached = MIN_CACHED if min_cached is None else min_cached
    tag = _key(frontend, mirror, pixels.shape[1:], view)
    _read_indexes(tag)
    known = _gather(tag, hashes)
    if known is not None:
        return known
    if len(pixels) < min_cached:
        keys = [f"{tag}:{h}" for h in hashes]
        todo = [i for i, k in enumerate(keys) if k not in _memo]
        if not keys:
            return compute(frontend, pixels, mirror, view=view, hashes=hashes)
        new = dict(zip(todo, compute(frontend, pixels[todo], mirror, view=view, hashes=hashes[todo]))) if todo else {}
        global _memo_bytes
        size = sum(f.nbytes for f in new.values())
        if _memo_bytes + size <= MEMO_BYTES:  # remembered while they fit, else only returned
            _memo.update((keys[i], f) for i, f in new.items())
            _memo_bytes += size
        return np.stack([new[i] if i in new else _memo[k] for i, k in enumerate(keys)])
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tag}:{pixels.shape}".encode())
    for s in hashes:
        h.update(str(s).encode())
    path = cache_dir() / f"features-{h.hexdigest()}.npy"
    if path.is_file():
        return _remember(tag, hashes, path)
    feats = compute(frontend, pixels, mirror, view=view, hashes=hashes)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, feats)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _remember(tag, hashes, path)
    return feats


class FeatureViews:
    """The front-end's features of a training set (and of its mirror images when ``mirror``), in memory.

    :meth:`views` gives K views per example, example-major. Without augmented views, view j of example i is the
    mirror image when ``(j + coin_i)`` is odd, ``coin_i`` a fair coin: K=1 is a random flip, K=2 both the face
    and its mirror. With ``aug_views`` N > 0 the pool of each face holds P = (N + 1) views (2(N + 1) with
    mirror images: the face, each augmented copy, and their mirror images), and the K views are K distinct ones
    drawn at random from it (a pool smaller than K is repeated).
    """

    def __init__(self, frontend: nn.Module, fs, mirror: bool, device: torch.device | str = "cpu", aug_views: int = 0):
        self.plain = torch.from_numpy(np.array(cached(frontend, fs.pixels, fs.hashes)))
        self.mirror = torch.from_numpy(np.array(cached(frontend, fs.pixels, fs.hashes, True))) if mirror else None
        self.device = device
        self.pool = None
        if aug_views:
            flips = (False, True) if mirror else (False,)
            self.pool = torch.stack([self.plain] + ([self.mirror] if mirror else []) + [
                torch.from_numpy(np.array(cached(frontend, fs.pixels, fs.hashes, m, view=v)))
                for v in range(1, aug_views + 1) for m in flips])
            # the face and its mirror are the pool's first rows: keep one copy of them in memory
            self.plain, self.mirror = self.pool[0], (self.pool[1] if mirror else None)

    def __len__(self) -> int:
        return len(self.plain)

    def views(self, rows: torch.Tensor, k: int = 1) -> torch.Tensor:
        if self.pool is not None:
            p = len(self.pool)
            pick = torch.rand(len(rows), p).argsort(dim=1)[:, torch.arange(k) % p]  # [n, k] distinct while k <= P
            return self.pool[pick.reshape(-1), rows.repeat_interleave(k)].float().to(self.device)
        rows = rows.repeat_interleave(k)
        x = self.plain[rows]
        if self.mirror is not None:
            flip = (torch.arange(len(rows)) + torch.randint(0, 2, (len(rows) // k,)).repeat_interleave(k)) % 2 == 1
            x = torch.where(flip.view(-1, *[1] * (x.dim() - 1)), self.mirror[rows], x)  # any feature shape
        return x.float().to(self.device)


@torch.no_grad()
def head_logits(net: nn.Module, feats: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """Logits of ``net.head`` on precomputed features, in eval mode."""
    was = net.training
    net.eval()
    device = next(net.parameters()).device
    out = torch.cat([net.head(feats[i:i + batch].float().to(device)) for i in range(0, len(feats), batch)])
    net.train(was)
    return out
