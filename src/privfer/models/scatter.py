"""Scattering-network features (Mallat 2012; Oyallon & Mallat 2015) as a fixed front-end, and ScatterNet models.

Tramer & Boneh (2021, "Differentially Private Learning Needs Better Features") show that under DP-SGD a
small model on top of *fixed* scattering features beats end-to-end CNNs at the same privacy budget: the
features cost no privacy (nothing in them is learnt) and the trainable part is small and well conditioned.

:class:`Scattering` is a 2-layer scattering transform with J=2 scales and L=8 orientations, written with
plain (fixed) convolutions, so that it runs and exports to ONNX like any other layer. The filters follow
kymatio's ``Scattering2D`` filter bank (Morlet wavelets ``psi`` with sigma 0.8 * 2^j, centre frequency
3*pi/4 / 2^j, slant 4/L; Gaussian low-pass ``phi`` with sigma 0.8 * 2^(J-1)), sampled in the spatial
domain and truncated, with reflection padding. A 48x48 face gives 81 channels at 12x12:

* order 0: ``x * phi``, subsampled by 4 (1 channel);
* order 1: ``|x * psi_{j,t}| * phi`` for j in {0, 1}, 8 orientations (16 channels);
* order 2: ``||x * psi_{0,t1}| * psi_{1,t2}| * phi`` (64 channels).

Two variants compute these (``Scattering(variant)``, the ``scattering`` option of the scatter models):

* ``"full"``: every wavelet convolution at the input's resolution, as kymatio does for j=0 -> 1
  (56 MFLOPs per 48x48 face). The models shipped before the option existed use it.
* ``"fast"`` (the default): Mallat's cascade. A wavelet at scale j=1 is the j=0 wavelet on a grid half as
  fine, so order 1 at j=1 and order 2 filter anti-aliased half-resolution copies (of the face, of
  ``|x * psi_0|``) with the small j=0 wavelets, and every coefficient is then square-root compressed
  (which makes the features more linearly separable). Less than half the FLOPs (23 MFLOPs).

The features are not learnt, so the training loop computes them once per image (and its mirror image) and
trains only :attr:`ScatterNet.head` on them (see ``privfer.train.features``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PrivferError
from .layers import conv_gn

J, L = 2, 8
#: Kernel sizes (odd): the Morlet envelope is at most ~4.5% of its peak at the edge of each.
PSI_SIZE = {0: 9, 1: 17}
PHI_SIZE = {1: 11, 2: 7}  # phi at full resolution (sigma 1.6) and at half resolution (sigma 0.8)
AA_SIZE = 5  # the "fast" variant's anti-aliasing Gaussian (sigma 0.8) before halving the resolution
VARIANTS = ("full", "fast")
DEFAULT_VARIANT = "fast"


def gabor(size: int, sigma: float, theta: float, xi: float, slant: float = 1.0) -> np.ndarray:
    """Complex Gabor filter (kymatio's ``gabor_2d`` without periodisation), centred in a ``size``-square grid."""
    r = size // 2
    xx, yy = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    curv = rot @ np.diag([1.0, slant * slant]) @ rot.T / (2 * sigma * sigma)
    arg = -(curv[0, 0] * xx * xx + (curv[0, 1] + curv[1, 0]) * xx * yy + curv[1, 1] * yy * yy)
    arg = arg + 1j * xi * (xx * math.cos(theta) + yy * math.sin(theta))
    return np.exp(arg) / (2 * math.pi * sigma * sigma / slant)


def morlet(size: int, sigma: float, theta: float, xi: float, slant: float) -> np.ndarray:
    """Zero-mean Morlet wavelet: a Gabor filter minus its envelope scaled to cancel the mean."""
    wave, env = gabor(size, sigma, theta, xi, slant), gabor(size, sigma, theta, 0.0, slant)
    return wave - wave.sum() / env.sum() * env


def _psi_bank(j: int) -> torch.Tensor:
    """The L wavelets at scale j as real conv weights [2L, 1, k, k]: (real, imaginary) per orientation."""
    ks = []
    for t in range(L):
        theta = (int(L - L / 2 - 1) - t) * math.pi / L
        w = morlet(PSI_SIZE[j], 0.8 * 2 ** j, theta, 3.0 / 4.0 * math.pi / 2 ** j, 4.0 / L)
        ks += [w.real, w.imag]
    return torch.tensor(np.stack(ks), dtype=torch.float32).unsqueeze(1)


def gaussian(size: int, sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian ``g`` of the low-pass ``phi = outer(g, g)`` (kymatio's isotropic ``gabor_2d``
    with xi=0 is separable)."""
    g = gabor(size, sigma, 0.0, 0.0).real[size // 2]
    return g / g.sum()


def lowpass_matrix(n: int, g: np.ndarray, stride: int) -> np.ndarray:
    """The [n // stride, n] matrix of filtering a length-n signal with ``g`` (reflection padding) and keeping
    every ``stride``-th sample: ``A @ u`` is ``conv1d(pad(u, reflect), g, stride)``."""
    k, p = len(g), len(g) // 2
    a = np.zeros((n // stride, n))
    for i in range(n // stride):
        for t in range(k):
            j = abs(i * stride + t - p)  # reflection at 0 ...
            j = 2 * (n - 1) - j if j > n - 1 else j  # ... and at n-1
            a[i, j] += g[t]
    return a


#: The Gaussian low-passes, as (size, sigma): phi at full and at half resolution, and the "fast" variant's
#: anti-aliasing filter before halving the resolution.
LOWPASS = {"phi_full": (PHI_SIZE[1], 0.8 * 2 ** (J - 1)), "phi_half": (PHI_SIZE[2], 0.8 * 2 ** (J - 2)),
           "aa": (AA_SIZE, 0.8)}


class Scattering(nn.Module):
    """Fixed 2-layer scattering transform: float [N, 1, S, S] in [0, 1] -> [N, 81, S/4, S/4]. No parameters.

    ``variant``: ``"fast"`` or ``"full"`` (see the module docstring). The filters are non-persistent buffers:
    they are rebuilt from the formulas, never saved or loaded.
    """

    out_channels = 1 + J * L + L * L

    def __init__(self, variant: str = DEFAULT_VARIANT):
        super().__init__()
        if variant not in VARIANTS:
            raise PrivferError(f"scattering must be one of {', '.join(VARIANTS)}, not {variant!r}")
        self.variant = variant
        self.register_buffer("psi0", _psi_bank(0), persistent=False)
        if variant == "full":
            self.register_buffer("psi1", _psi_bank(1), persistent=False)
        self._matrices: dict = {}  # low-pass matrices by (filter, length, stride, device, dtype)

    @property
    def cache_tag(self) -> str:
        """Names the features this front-end computes (part of the feature cache's key)."""
        return "" if self.variant == "full" else self.variant

    @staticmethod
    def _conv(x, w, stride=1):
        p = w.shape[-1] // 2
        return F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), w, stride=stride)

    @staticmethod
    def _modulus(z):  # [N, 2C, H, W] (re, im interleaved) -> [N, C, H, W]
        n, c2, h, w = z.shape
        z = z.view(n, c2 // 2, 2, h, w)
        return torch.sqrt(z[:, :, 0] ** 2 + z[:, :, 1] ** 2 + 1e-12)

    def _matrix(self, name: str, n: int, stride: int, like: torch.Tensor) -> torch.Tensor:
        key = (name, n, stride, like.device, like.dtype)
        if key not in self._matrices:
            g = gaussian(*LOWPASS[name])
            self._matrices[key] = torch.as_tensor(lowpass_matrix(n, g, stride), dtype=like.dtype, device=like.device)
        return self._matrices[key]

    def _low(self, u, name, stride):
        """The 2-D Gaussian low-pass ``name`` of every channel, subsampled by ``stride``: ``A U B^T`` with the
        separable filter's matrices (two matrix products: on a CPU several times faster than a
        one-channel convolution per map, and exactly the same sums)."""
        h, w = u.shape[-2:]
        a, b = self._matrix(name, h, stride, u), self._matrix(name, w, stride, u)
        return torch.matmul(a, torch.matmul(u, b.T))

    def _order2(self, u, psi):
        """Every order-1 map through the L wavelets ``psi``: [N, L, H, W] -> [N, L*L, H', W'], t1-major
        (one map at a time: on a CPU faster than a grouped convolution)."""
        n, _, h, w = u.shape
        z = self._conv(u.reshape(n * L, 1, h, w), psi, stride=2 if self.variant == "full" else 1)
        return self._modulus(z.reshape(n, L * 2 * L, *z.shape[-2:]))

    def forward(self, x):
        u10 = self._modulus(self._conv(x, self.psi0))                   # j=0: [N, 8, S, S]
        if self.variant == "full":
            u11 = self._modulus(self._conv(x, self.psi1, stride=2))     # j=1: [N, 8, S/2, S/2]
            u2 = self._order2(u10, self.psi1)                           # [N, 64, S/2, S/2]
        else:
            u11 = self._modulus(self._conv(self._low(x, "aa", 2), self.psi0))
            u2 = self._order2(self._low(u10, "aa", 2), self.psi0)
        s0 = self._low(x, "phi_full", 4)
        s10 = self._low(u10, "phi_full", 4)
        s_half = self._low(torch.cat([u11, u2], dim=1), "phi_half", 2)
        out = torch.cat([s0, s10, s_half], dim=1)
        return out if self.variant == "full" else out.clamp_min(0).sqrt()


class ScatterNet(nn.Module):
    """Fixed :class:`Scattering` front-end + a trainable head: ``linear`` or a small ``cnn`` (Tramer & Boneh 2021).

    The head starts with a non-affine GroupNorm over the 81 scattering channels (27 groups, as in the paper),
    which normalises each image's features without learning anything. Only :attr:`head` has parameters.
    ``pool=k`` (linear head only) averages the normalised maps over k x k cells first: k*k times fewer weights,
    a linear head constrained to be constant on each cell.
    """

    def __init__(self, num_classes: int, head: str = "cnn", width: int = 64, dropout: float = 0.0,
                 input_size: int = 48, scattering: str = DEFAULT_VARIANT, pool: int = 1):
        super().__init__()
        c = Scattering.out_channels
        self.frontend = Scattering(scattering)
        norm = nn.GroupNorm(27, c, affine=False)
        side = input_size // 4
        if pool != 1 and head != "linear":
            raise PrivferError(f"pool is an option of the linear head only, not of the {head!r} head")
        if pool < 1 or side % pool:
            raise PrivferError(f"pool must divide the {side}x{side} feature maps of the linear head, not {pool!r}")
        if head == "linear":
            pooling = [nn.AvgPool2d(pool)] if pool > 1 else []
            layers = [norm, *pooling, nn.Flatten(), nn.Dropout(dropout), nn.Linear(c * (side // pool) ** 2, num_classes)]
        elif head == "cnn":
            layers = [norm, conv_gn(c, width), nn.MaxPool2d(2), conv_gn(width, width), nn.MaxPool2d(2),
                      conv_gn(width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                      nn.Linear(2 * width, num_classes)]
        else:
            raise PrivferError(f"scatter head must be 'linear' or 'cnn', not {head!r}")
        self.head = nn.Sequential(*layers)
        self.input_size = input_size if head == "linear" else None  # the linear head fixes the face size
        nn.init.zeros_(self.head[-1].weight)  # zero-initialised classifier: a good start under DP noise
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x):
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise PrivferError(f"scatter-linear was built for {self.input_size}x{self.input_size} faces, got "
                               f"{x.shape[-2]}x{x.shape[-1]} (set model_kwargs: {{input_size: N}})")
        return self.head(self.frontend(x))


class ScatterLinear(ScatterNet):
    """:class:`ScatterNet` with a linear head (the cheapest model to train with DP)."""

    def __init__(self, num_classes: int, head: str = "linear", **kwargs):
        super().__init__(num_classes, head=head, **kwargs)
