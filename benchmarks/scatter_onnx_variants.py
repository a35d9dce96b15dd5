"""onnxruntime speed of exact rewrites of the scattering front-end (``privfer.models.scatter.Scattering``).

Each variant computes the same features (up to float rounding, printed as max|diff|) with other operators:

* ``slices``: real and imaginary filter planes as two channel blocks, the modulus from two slices (no Gather);
* ``sep``: the Gaussian low-passes as two 1-D convolutions (the Gaussian is separable);
* ``grouped``: the order-2 convolution as one grouped convolution instead of one channel at a time.

Prints faces/s of the front-end alone at batch 64 (best of 3 x 15 calls, 2 threads), as ``privfer bench infer``
runs it: exported to ONNX by privfer's exporter and run by an onnxruntime session with privfer's settings.

Usage: python benchmarks/scatter_onnx_variants.py
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from privfer.infer.onnx import onnx_model
from privfer.models.io import LoadedModel
from privfer.models.scatter import PHI_SIZE, J, L, Scattering, gabor

def sep_phi(size, sigma):
    """The 1-D factor v of the normalised Gaussian low-pass: phi = outer(v, v)."""
    g = gabor(size, sigma, 0.0, 0.0).real
    c = g[size // 2]  # the centre row: g = outer(c, c) / g[r, r] up to normalisation
    v = c / c.sum()
    return torch.tensor(v, dtype=torch.float32)


class Variant(Scattering):
    """:class:`Scattering` with the rewrites named in the module docstring switched on or off."""

    def __init__(self, sep=True, slices=True, grouped=False):
        super().__init__()
        self.sep, self.slices, self.grouped = sep, slices, grouped
        if slices:  # real parts first, then imaginary
            for nm in ("psi0", "psi1"):
                w = getattr(self, nm)
                self.register_buffer(nm, torch.cat([w[0::2], w[1::2]]), persistent=False)
        self.register_buffer("phi_full_v", sep_phi(PHI_SIZE[1], 0.8 * 2 ** (J - 1)), persistent=False)
        self.register_buffer("phi_half_v", sep_phi(PHI_SIZE[2], 0.8 * 2 ** (J - 2)), persistent=False)

    def _mod(self, z):
        if self.slices:
            c = z.shape[1] // 2
            a, b = z[:, :c], z[:, c:]
            return torch.sqrt(a * a + b * b + 1e-12)
        return self._modulus(z)

    def _lowsep(self, u, v, stride):
        n, c, h, w = u.shape
        k = v.numel()
        p = k // 2
        x = u.reshape(n * c, 1, h, w)
        x = F.pad(x, (p, p, p, p), mode="reflect")
        x = F.conv2d(x, v.view(1, 1, k, 1), stride=(stride, 1))
        x = F.conv2d(x, v.view(1, 1, 1, k), stride=(1, stride))
        return x.view(n, c, h // stride, w // stride)

    def forward(self, x):
        u10 = self._mod(self._conv(x, self.psi0))
        u11 = self._mod(self._conv(x, self.psi1, stride=2))
        n, _, h, w = u10.shape
        if self.grouped:
            p = self.psi1.shape[-1] // 2
            wgt = self.psi1.repeat(L, 1, 1, 1)  # [8*16,1,k,k]
            z = F.conv2d(F.pad(u10, (p, p, p, p), mode="reflect"), wgt, stride=2, groups=L)  # [N, 8*16, ...]
        else:
            z = self._conv(u10.reshape(n * L, 1, h, w), self.psi1, stride=2).reshape(n, L * 2 * L, h // 2, w // 2)
        if self.slices:  # z is [N, t1, (re t2..., im t2...)] -> modulus per t1, keep t1-major order
            z = z.view(n, L, 2, L, h // 2, w // 2)
            u2 = torch.sqrt(z[:, :, 0] ** 2 + z[:, :, 1] ** 2 + 1e-12).reshape(n, L * L, h // 2, w // 2)
        else:
            u2 = self._modulus(z)
        if self.sep:
            s0 = self._lowsep(x, self.phi_full_v, 4)
            s10 = self._lowsep(u10, self.phi_full_v, 4)
            s_half = self._lowsep(torch.cat([u11, u2], 1), self.phi_half_v, 2)
        else:
            s0 = self._low(x, self.phi_full, 4)
            s10 = self._low(u10, self.phi_full, 4)
            s_half = self._low(torch.cat([u11, u2], 1), self.phi_half, 2)
        return torch.cat([s0, s10, s_half], 1)


def bench(m, x):
    """(best faces/s, output) of ``m`` exported to ONNX and run by onnxruntime on ``x``, with the session
    settings of ``privfer predict`` (:func:`privfer.infer.onnx.onnx_model`)."""
    session = onnx_model(LoadedModel(m, {"classes": ["neutral"], "input_size": x.shape[-1]}), threads=2).session
    xn = {session.get_inputs()[0].name: x.numpy()}
    for _ in range(3):
        y = session.run(None, xn)[0]
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(15):
            session.run(None, xn)
        best = max(best, len(x) * 15 / (time.perf_counter() - t))
    return best, y


def main() -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 1, 48, 48)
    ref = Scattering().eval()
    with torch.no_grad():
        yref = ref(x).numpy()
    variants = [("current", ref), ("slices", Variant(sep=False, slices=True)), ("sep", Variant(sep=True, slices=False)),
                ("sep+slices", Variant(True, True)), ("sep+slices+grouped", Variant(True, True, True))]
    for name, m in variants:
        fps, y = bench(m.eval(), x)
        print(f"{name:22s} {fps:7.0f} faces/s (frontend only)  max|diff| {np.abs(y - yref).max():.2e}")


if __name__ == "__main__":
    main()
