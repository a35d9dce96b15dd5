"""A public subspace for the features: the basis that a model's ``FeatureProjection`` projects onto, and folding it
away before the model is saved.

Under DP-SGD the noise on a layer's weights grows with their number. When a run has public data, the layer after
the features can learn in the span of the public faces' top K principal directions instead of all D feature
directions (Zhou, Wu and Banerjee 2021, "Bypassing the ambient dimension: private SGD with gradient subspace
identification", use public data the same way for the gradients). The basis is set once, before the first stage,
from the public data alone (the exact principal directions of its features, centred on their mean), so it costs
no privacy; both stages train through it. Before the model is saved, :func:`fold_projection` multiplies the basis
into the next linear layer: ``W (x P) = (W P^T) x``, so the saved model is the same network without
``project`` (what its card's ``model_kwargs`` say), its first layer's weights confined to the subspace.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import PrivferError
from ..models.layers import FeatureProjection
from .center import center_of, feature_vectors
from .features import mirror_views


def projection_of(net: nn.Module) -> FeatureProjection | None:
    """The model's :class:`FeatureProjection` (in its head), or None."""
    head = getattr(net, "head", None)
    if not isinstance(head, nn.Sequential):
        return None
    return next((m for m in head if isinstance(m, FeatureProjection)), None)


def public_basis(x: torch.Tensor, k: int, whiten: float = 0.0) -> tuple[torch.Tensor, float]:
    """[D, k]: the top k principal directions (orthonormal columns) of the rows of ``x`` [N, D], centred on their
    mean; exact and deterministic (an SVD in float64), up to each column's sign, which is fixed positive on its
    largest entry. Also the fraction of the centred rows' variance they keep.

    ``whiten`` = a in [-1, 1] scales column i by c * var_i ** (-a / 2), var_i the rows' variance along it, with c
    such that the projected rows keep their total variance: a = 1 gives every direction the same variance
    (whitening), so that DP-SGD's isotropic noise and a single learning rate treat the public data's minor
    directions like its major ones; a = 0 is the plain orthonormal basis, a < 0 stretches the major directions
    instead. (On FER2013's public 10% every a tried, -0.5, 0.5 and 1, did worse than 0: docs/experiments.md.)"""
    if k > min(x.shape):
        raise PrivferError(f"project {k}: the public data gives at most {min(x.shape)} principal directions "
                           f"({x.shape[0]} faces, {x.shape[1]} features); lower it")
    x = x.double()
    _, s, vh = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    basis = vh[:k].T
    sign = torch.sign(basis.gather(0, basis.abs().argmax(0, keepdim=True)))
    var = s[:k].square().clamp_min(torch.finfo(torch.float64).tiny)
    scale = var ** (-whiten / 2)
    scale = scale * (var.sum() / (var * scale.square()).sum()).sqrt()
    return (basis * sign * scale).float(), float(s[:k].square().sum() / s.square().sum())


def init_subspace(cfg, data, net: nn.Module, ema_net: nn.Module, frontend: nn.Module, log) -> None:
    """Set the basis of ``net`` and of its weight average from the public data's features as the head sees them
    (minus the model's centre, if it has one), before the first stage (the config refuses ``project`` without
    public data)."""
    p = projection_of(net)
    v = feature_vectors(frontend, data.public, mirror_views(frontend, cfg.augment))
    center = center_of(net)
    basis, kept = public_basis(v - center.mean.flatten().to(v) if center is not None else v, p.basis.shape[1],
                               cfg.project_whiten)
    p.basis.copy_(basis)
    projection_of(ema_net).basis.copy_(basis)
    log(f"feature subspace: top {basis.shape[1]} principal directions of {len(data.public)} public faces' "
        f"{basis.shape[0]} features ({kept:.1%} of their variance)"
        + (f", whitened to the power {cfg.project_whiten:g}" if cfg.project_whiten else ""))


def fold_projection(net: nn.Module) -> nn.Module:
    """``net`` with its projection multiplied into the next linear layer (only dropout may lie between), in place:
    the same function, without ``project``. A model without a projection is returned unchanged."""
    p = projection_of(net)
    if p is None:
        return net
    layers = list(net.head)
    i = layers.index(p)
    j = next(j for j in range(i + 1, len(layers)) if isinstance(layers[j], nn.Linear))
    if not all(isinstance(m, nn.Dropout) for m in layers[i + 1:j]):
        raise ValueError("fold_projection: only dropout may lie between the projection and the next linear layer")
    lin = layers[j]
    folded = nn.Linear(p.basis.shape[0], lin.out_features, bias=lin.bias is not None).to(lin.weight)
    with torch.no_grad():
        folded.weight.copy_(lin.weight @ p.basis.T)
        if lin.bias is not None:
            folded.bias.copy_(lin.bias)
    layers[j] = folded
    del layers[i]
    net.head = nn.Sequential(*layers)
    return net


def describe_subspace(cfg, data) -> dict | None:
    """The model card's ``feature_subspace``: where the basis came from, and that the saved weights have it folded in."""
    k = cfg.model_kwargs.get("project")
    if not k:
        return None
    return {"source": "public data (exact principal directions of its features, centred)", "n": len(data.public),
            "dimensions": k, "whiten": cfg.project_whiten, "privacy": "none spent: public data",
            "saved_as": "folded into the first linear layer of the head: the saved model has no projection, and "
                        "model_kwargs omit project"}
