"""Tensors from preprocessed faces: uint8 [N, S, S] -> float32 [N, 1, S, S] in [0, 1]."""
from __future__ import annotations

import numpy as np
import torch


def to_input(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The model input for uint8 faces: float32 [N, 1, S, S] scaled to [0, 1]."""
    x = torch.as_tensor(pixels)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    return x.float().div_(255.0)


#: ``FaceSet.dropped`` key of validation images dropped because they are private training data too.
IN_PRIVATE = "in private training data"


def without_private(fs, private_hashes):
    """``fs`` without the images whose content hash is in ``private_hashes`` (counted in ``dropped[IN_PRIVATE]``).

    Data used without privacy (validation, calibration) must leave out the DP-protected training images, or
    using it would release information about them outside the guarantee."""
    overlap = np.isin(fs.hashes, np.asarray(list(private_hashes), dtype=fs.hashes.dtype))
    if not overlap.any():
        return fs
    out = fs.subset(~overlap)
    out.dropped[IN_PRIVATE] = int(overlap.sum())
    return out


def hash_fraction(hex_hash: str) -> float:
    """Map a content hash to [0, 1): equal images always land on the same side of any split."""
    return int(hex_hash[:13], 16) / float(1 << 52)


def split_by_hash(fs, fraction: float):
    """Split a FaceSet into (public, private) with about ``fraction`` of it public, by content hash.

    Duplicate images share a hash, so they all fall on one side.
    """
    from ..data.cache import FaceSet  # noqa: F401  (type only)

    u = np.array([hash_fraction(h) for h in fs.hashes])
    pub = u < fraction
    return fs.subset(pub), fs.subset(~pub)


def check_disjoint(public, private) -> None:
    """Refuse two-stage training when an image (content hash of decoded pixels) is in both sets."""
    from ..errors import PrivferError

    shared = set(public.hashes.tolist()) & set(private.hashes.tolist())
    if shared:
        n_priv = int(np.isin(private.hashes, list(shared)).sum())
        raise PrivferError(
            f"{len(shared)} images (content hash) are in both the public set ({public.spec}) and the private set "
            f"({private.spec}), {n_priv} private examples in all: training on them without DP would void the guarantee"
        )
