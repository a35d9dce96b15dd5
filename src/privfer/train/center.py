"""Centring fixed features before training a head on them: the mean that a model's ``FeatureCenter`` subtracts.

A linear head on fixed features learns faster under DP-SGD when the features are centred (see
:class:`privfer.models.layers.FeatureCenter`). The mean is set once, before the first stage, from:

- the public data, when the run has a public stage: its exact mean, which costs no privacy;
- otherwise the private data, released with the Gaussian mechanism: each face's feature vector (the
  average of the face's and its mirror image's when the run augments with mirror images) is clipped to
  the norm :func:`feature_bound`, the vectors are summed, noise N(0, (noise_multiplier * bound)^2) is added
  to every coordinate, and the sum is divided by the number of private images (public in DP-SGD too,
  through its sampling rate). The release is one more entry in the run's accountant (planned with the
  steps by :meth:`PrivacyState.plan`, so the target epsilon holds for both together) and in the card.

With 27,473 faces, noise multiplier 20 and the 4,032 CenterFace + Face Mesh features (bound 31.7), the
noise on each coordinate of the mean has a standard deviation of 20 * 31.7 / 27,473 = 0.023, against about
0.5 for the features themselves (the card's ``noise_std_per_coordinate`` and ``noise_to_feature_rms``); the
steps' noise multiplier rises a little to pay for the release.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from . import distributed
from ..models.layers import FeatureCenter, MirrorAverage
from .features import cached, mirror_views
from .privacy import PrivacyState


def center_of(net: nn.Module) -> FeatureCenter | None:
    """The model's :class:`FeatureCenter` (the first module of its head), or None."""
    head = getattr(net, "head", None)
    first = head[0] if isinstance(head, nn.Sequential) and len(head) else None
    return first if isinstance(first, FeatureCenter) else None


@torch.no_grad()
def _probe(frontend: nn.Module, size: int = 48) -> torch.Tensor:
    """The front-end's features of a fixed noise image (data-independent)."""
    x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0))
    return frontend.eval()(x).flatten()


def feature_bound(frontend: nn.Module) -> float:
    """The norm each face's feature vector is clipped to: the front-end's output norm on a fixed noise image
    (data-independent; per-image normalisation gives nearly every face this norm)."""
    return float(_probe(frontend).norm())


def feature_vectors(frontend: nn.Module, fs, mirror: bool) -> torch.Tensor:
    """[N, D] float32 feature vectors of a face set (averaged with the mirror images' when ``mirror``)."""
    fe = MirrorAverage(frontend) if mirror else frontend  # from the cached features of both (features.cached)
    return torch.from_numpy(np.array(cached(fe, fs.pixels, fs.hashes))).flatten(1).float()


def set_public_center(net: nn.Module, frontend: nn.Module, fs, mirror: bool) -> None:
    """Set the model's centre to the exact mean of the public faces' features."""
    c = center_of(net)
    c.mean.copy_(feature_vectors(frontend, fs, mirror).mean(0).reshape(c.mean.shape))


def set_private_center(net: nn.Module, frontend: nn.Module, fs, n_total: int, mirror: bool,
                       privacy: PrivacyState, noise_multiplier: float) -> None:
    """Set the model's centre to a Gaussian-mechanism estimate of the private faces' mean feature, and record
    the release in ``privacy``. ``fs``: this process's share of the private data (all of it for one process);
    ``n_total``: the number of private images over all processes."""
    c = center_of(net)
    bound = feature_bound(frontend)
    v = feature_vectors(frontend, fs, mirror)
    v = v * (bound / v.norm(dim=1, keepdim=True).clamp(min=bound))  # clip to the bound
    total = v.sum(0).to(c.mean.device)
    if distributed.rank() == 0:  # one noise draw for the whole sum
        total += torch.normal(0.0, noise_multiplier * bound, total.shape, device=total.device)
    if distributed.world_size() > 1:
        distributed.all_reduce_sum_([total])
    privacy.record_release(noise_multiplier)
    c.mean.copy_((total / n_total).reshape(c.mean.shape))


def describe_center(cfg, data, frontend: nn.Module) -> dict | None:
    """The model card's ``feature_center``: where the centre came from and what it cost (None: no centre)."""
    if not cfg.model_kwargs.get("center"):
        return None
    mirror = mirror_views(frontend, cfg.augment)
    if data.public is not None:
        return {"source": "public data (exact mean)", "n": len(data.public), "mirror_averaged": mirror,
                "privacy": "none spent: public data"}
    f = _probe(frontend)
    bound, n = float(f.norm()), len(data.private)
    return {"source": "private data (Gaussian mechanism)", "n": n, "mirror_averaged": mirror,
            "clip_norm": round(bound, 4), "noise_multiplier": cfg.center_noise,
            "noise_std_per_coordinate": round(cfg.center_noise * bound / n, 6),
            # the features' root mean square is bound / sqrt(D): the noise relative to it
            "noise_to_feature_rms": round(cfg.center_noise * f.numel() ** 0.5 / n, 4),
            "privacy": "the entry [noise_multiplier, 1.0, 1] of accountant_history, included in epsilon_spent"}


def init_center(cfg, data, net: nn.Module, ema_net: nn.Module, frontend: nn.Module, privacy: PrivacyState | None,
                private_share, log) -> None:
    """Set the centre of ``net`` and of its weight average before the first stage: from the public data, or
    (``private_share``: this process's share of the private data) released from the private data."""
    mirror = mirror_views(frontend, cfg.augment)
    if private_share is not None:
        set_private_center(net, frontend, private_share, len(data.private), mirror, privacy, cfg.center_noise)
    else:
        set_public_center(net, frontend, data.public, mirror)
    center_of(ema_net).mean.copy_(center_of(net).mean)
    about = describe_center(cfg, data, frontend)
    ratio = about.get("noise_to_feature_rms")
    log(f"feature centre: {about['source']}" + (f", noise {ratio:.3f} of the features' RMS" if ratio else ""))
    if ratio and ratio > 0.1:
        log(f"warning: {len(data.private)} private images are too few for a precise centre at center_noise "
            f"{cfg.center_noise}: its noise is {ratio:.2f} of the features' RMS (lower center_noise, spending more "
            "epsilon on it, or train without model_kwargs center)")
