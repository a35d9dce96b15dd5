"""Training on a fixed front-end's features: models with a ``frontend`` (no parameters) and a ``head``.

A fixed front-end (the scattering transform of :mod:`privfer.models.scatter`) gives the same output for
the same face every epoch, so it is computed once per face (and once for its mirror image, the one
augmentation that commutes with caching) and only the head is trained, with or without DP. The
features are kept in float16 on disk in the preprocessing cache directory, keyed by the faces' content
hashes and the front-end, so later runs (other budgets, shadow models of an audit) reuse them.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import numpy as np
import torch
from torch import nn

from ..data.cache import cache_dir
from .data import to_input

FEATURES_VERSION = 1


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


@torch.no_grad()
def compute(frontend: nn.Module, pixels: np.ndarray, mirror: bool = False, batch: int = 512) -> np.ndarray:
    """float16 features of uint8 faces [N, S, S] (mirrored left-right with ``mirror``)."""
    frontend.eval()
    out = []
    for i in range(0, len(pixels), batch):
        x = to_input(pixels[i:i + batch])
        if mirror:
            x = x.flip(-1)
        out.append(frontend(x).to(torch.float16).numpy())
    return np.concatenate(out) if out else np.zeros((0,), np.float16)


#: Smaller sets (shadow models' halves, tests) are not written to disk: their features are computed in
#: memory and remembered per image (by content hash) for the life of the process, up to MEMO_MAX images,
#: so the many overlapping subsets of an audit's shadow models compute each face once.
MIN_CACHED = 4096
MEMO_MAX = 40_000
_memo: dict[str, np.ndarray] = {}


def _key(frontend: nn.Module, mirror: bool, shape) -> str:
    tag = getattr(frontend, "cache_tag", "")  # which features a configurable front-end computes
    name = f"{type(frontend).__module__}.{type(frontend).__name__}" + (f"-{tag}" if tag else "")
    return f"{name}:{FEATURES_VERSION}:{mirror}:{tuple(shape)}"


def cached(frontend: nn.Module, pixels: np.ndarray, hashes: np.ndarray, mirror: bool = False,
           min_cached: int = MIN_CACHED) -> np.ndarray:
    """:func:`compute`, read from (or written atomically to) the cache directory when it was done before.

    Sets of fewer than ``min_cached`` faces are not written (see ``MIN_CACHED``). A flip-invariant front-end
    that averages an inner one's features of the face and its mirror image (``MirrorAverage``) is computed from
    the inner front-end's cached features of both."""
    inner = getattr(frontend, "inner", None)
    if getattr(frontend, "flip_invariant", False) and inner is not None:
        a = cached(inner, pixels, hashes, False, min_cached)
        b = cached(inner, pixels, hashes, True, min_cached)
        return ((a.astype(np.float32) + b.astype(np.float32)) / 2).astype(np.float16)
    tag = _key(frontend, mirror, pixels.shape[1:])
    if len(pixels) < min_cached:
        keys = [f"{tag}:{h}" for h in hashes]
        todo = [i for i, k in enumerate(keys) if k not in _memo]
        if not keys or len(_memo) + len(todo) > MEMO_MAX:  # nothing to remember, or too much: just compute
            return compute(frontend, pixels, mirror)
        if todo:
            for i, f in zip(todo, compute(frontend, pixels[todo], mirror)):
                _memo[keys[i]] = f
        return np.stack([_memo[k] for k in keys])
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tag}:{pixels.shape}".encode())
    for s in hashes:
        h.update(str(s).encode())
    path = cache_dir() / f"features-{h.hexdigest()}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    feats = compute(frontend, pixels, mirror)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, feats)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return feats


class FeatureViews:
    """The front-end's features of a training set (and of its mirror images when ``mirror``), in memory.

    :meth:`views` gives K views per example, example-major. View j of example i is the mirror image when
    ``(j + coin_i)`` is odd, ``coin_i`` a fair coin: K=1 is a random flip, K=2 both the face and its mirror.
    """

    def __init__(self, frontend: nn.Module, fs, mirror: bool, device: torch.device | str = "cpu"):
        self.plain = torch.from_numpy(np.array(cached(frontend, fs.pixels, fs.hashes)))
        self.mirror = torch.from_numpy(np.array(cached(frontend, fs.pixels, fs.hashes, True))) if mirror else None
        self.device = device

    def __len__(self) -> int:
        return len(self.plain)

    def views(self, rows: torch.Tensor, k: int = 1) -> torch.Tensor:
        rows = rows.repeat_interleave(k)
        x = self.plain[rows]
        if self.mirror is not None:
            flip = (torch.arange(len(rows)) + torch.randint(0, 2, (len(rows) // k,)).repeat_interleave(k)) % 2 == 1
            x = torch.where(flip[:, None, None, None], self.mirror[rows], x)
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
