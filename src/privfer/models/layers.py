"""Small DP-friendly building blocks shared by the models: conv + GroupNorm + ReLU, input scaling."""
from __future__ import annotations

import torch
from torch import nn


def groups_for(channels: int, max_groups: int = 8) -> int:
    """Largest group count <= max_groups that divides ``channels`` (GroupNorm needs a divisor)."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def conv_gn(cin: int, cout: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """3x3 conv (no bias) -> GroupNorm [-> ReLU]. GroupNorm, never BatchNorm: per-example gradients stay per-example."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(groups_for(cout), cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=False))
    return nn.Sequential(*layers)


def release_plan(inputs: list[list[str]], keep) -> list[list[str]]:
    """For a graph run step by step (step ``i`` reads the tensors named in ``inputs[i]``), the names that
    step ``i`` reads for the last time, except those in ``keep``: an interpreter drops them after the step,
    so it holds only the tensors still needed instead of every layer's output. (Holding them all took a loss
    audit of a Face Mesh model to 20 GB.)"""
    last = {name: i for i, names in enumerate(inputs) for name in names}
    plan: list[list[str]] = [[] for _ in inputs]
    for name, i in last.items():
        if name not in keep:
            plan[i].append(name)
    return plan


#: The most faces a heavy fixed front-end (CenterFace, Face Mesh) runs at once without gradients: its memory
#: grows in proportion to the batch.
MAX_FRONTEND_BATCH = 128


def in_chunks(fn, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` computed on chunks of at most :data:`MAX_FRONTEND_BATCH` rows and concatenated, for a ``fn``
    that treats each row on its own. Whole when gradients are on or during ONNX export (the graph then stays
    one call)."""
    if len(x) <= MAX_FRONTEND_BATCH or torch.is_grad_enabled() or torch.onnx.is_in_onnx_export():
        return fn(x)
    return torch.cat([fn(c) for c in x.split(MAX_FRONTEND_BATCH)])


class Standardize(nn.Module):
    """Map pixels in [0, 1] to roughly zero mean, unit variance (fixed constants; part of the exported graph)."""

    def forward(self, x):
        return (x - 0.5) * 4.0


class FeatureCenter(nn.Module):
    """Subtract a fixed vector from the features: their mean over the training data, set once before training
    (``privfer.train.center``) and saved with the model. Not trained, so DP-SGD never sees it.

    Under DP-SGD every per-example gradient of a linear head is clipped; features that share a large common
    component spend most of each clipped gradient (and of the noise's signal-to-noise ratio) on it. Centred
    features give the head's weights only the part that differs between faces."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))

    def forward(self, x):
        return x - self.mean


class FeatureProjection(nn.Module):
    """Project flat features onto a fixed K-dimensional subspace: ``x @ basis`` with ``basis`` [D, K] the public
    training data's top principal directions as columns (orthonormal, or rescaled by the config's
    ``project_whiten``), set once before training (``privfer.train.subspace``). Not trained, so DP-SGD never sees it.

    Under DP-SGD the noise added to a weight matrix grows with its size, and all of it reaches the outputs. A layer
    on K projected features has K/D of the weights, so it gets K/D of the noise, while the directions in which the
    public faces' features hardly vary are dropped. Before a model is saved the projection is folded into the
    linear layer after it (:func:`privfer.train.subspace.fold_projection`): the saved model has no projection."""

    def __init__(self, dim: int, k: int):
        super().__init__()
        self.register_buffer("basis", torch.zeros(dim, k))

    def forward(self, x):
        return x @ self.basis


class MirrorAverage(nn.Module):
    """A fixed front-end made blind to left and right: the average of its features of the face and of the face's
    mirror image (test-time flip averaging, built into the model so that training, calibration, evaluation and
    inference all see the same features). Twice the front-end's cost per face; no parameters."""

    #: the features of a face and of its mirror image are the same: mirroring is no augmentation for it
    flip_invariant = True

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.out_channels = getattr(inner, "out_channels", None)
        self.cache_tag = f"{getattr(inner, 'cache_tag', type(inner).__name__)}-mirror-average"

    def forward(self, x):
        f = self.inner(torch.cat([x, x.flip(-1)]))  # one batch for both
        return f.unflatten(0, (2, -1)).mean(0)  # (no slicing by len(x): the ONNX export keeps the batch dynamic)


class StackedFeatures(nn.Module):
    """Fixed front-ends side by side (``parts``, concatenated along the channels). No parameters. The training loop
    caches each part's features on its own (``privfer.train.features.cached``), so adding a front-end reuses the
    others' cached features."""

    parts_classes: tuple[type[nn.Module], ...] = ()
    #: Flatten each part's features first: for parts whose features have different shapes (the class's
    #: ``out_shape`` is then one flat length; without it, ``out_channels`` is the parts' channels).
    flat = False

    def __init_subclass__(cls, **kwargs):
        """``cache_tag`` and ``out_channels`` or ``out_shape`` of a subclass, from its parts."""
        super().__init_subclass__(**kwargs)
        import math

        from .facefeat import feature_shape

        cls.cache_tag = "+".join(c.cache_tag for c in cls.parts_classes)
        if cls.flat:
            cls.out_shape = (sum(math.prod(feature_shape(c)) for c in cls.parts_classes),)
        else:
            cls.out_channels = sum(c.out_channels for c in cls.parts_classes)

    def __init__(self):
        super().__init__()
        self.parts = nn.ModuleList(cls() for cls in self.parts_classes)

    def forward(self, x):
        return torch.cat([p(x).flatten(1) if self.flat else p(x) for p in self.parts], dim=1)


class BranchClassifier(nn.Module):
    """One feature branch (anything with ``out_dim``) + dropout + linear head, on standardised pixels."""

    def __init__(self, branch: nn.Module, num_classes: int, dropout: float = 0.2):
        super().__init__()
        self.scale = Standardize()
        self.branch = branch
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(branch.out_dim, num_classes)

    def forward(self, x):
        return self.head(self.drop(self.branch(self.scale(x))))
