"""onnxruntime speed of the scattering front-end's variants (``privfer.models.scatter.Scattering``).

* ``full, conv low-pass``: the ``"full"`` variant with every Gaussian low-pass as a one-channel convolution per
  map (how privfer computed it before the low-pass matrices); the same sums as ``full``, printed as max|diff|;
* ``full``: the ``"full"`` variant as privfer computes it (low-passes as two matrix products);
* ``fast``: the ``"fast"`` variant (Mallat's cascade on half-resolution copies, square-root compressed), the
  default since the option exists; other features, so no max|diff|.

Prints faces/s of the front-end alone at batch 64 (best of 3 x 15 calls, 2 threads), as ``privfer bench infer``
runs it: exported to ONNX by privfer's exporter and run by an onnxruntime session with privfer's settings.

Usage: python benchmarks/scatter_onnx_variants.py
"""
from __future__ import annotations

import time

import numpy as np
import torch

from privfer.infer.onnx import onnx_model
from privfer.models.io import LoadedModel
from privfer.models.registry import count_flops
from privfer.models.scatter import LOWPASS, Scattering, gaussian


class ConvLowpass(Scattering):
    """:class:`Scattering` with each low-pass as a reflection-padded 2-D convolution, one map at a time."""

    def _low(self, u, name, stride):
        size, sigma = LOWPASS[name]
        g = gaussian(size, sigma)
        phi = torch.tensor(np.outer(g, g), dtype=u.dtype)[None, None]
        n, c, h, w = u.shape
        return self._conv(u.reshape(n * c, 1, h, w), phi, stride).view(n, c, h // stride, w // stride)


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
    ref = Scattering("full").eval()
    with torch.no_grad():
        yref = ref(x).numpy()
    variants = [("full, conv low-pass", ConvLowpass("full"), True), ("full", ref, True),
                ("fast", Scattering("fast"), False)]
    for name, m, same in variants:
        fps, y = bench(m.eval(), x)
        diff = f"max|diff| {np.abs(y - yref).max():.2e}" if same else "(other features)"
        mflops = count_flops(m) / 1e6
        print(f"{name:20s} {fps:7.0f} faces/s (front-end only)  {mflops:5.1f} MFLOPs  {diff}")


if __name__ == "__main__":
    main()
