"""Random transforms on batched face tensors, in torch: shift/crop, flip, small rotation and scale, brightness, contrast.

One affine warp per image (``affine_grid`` + ``grid_sample``) does shift, rotation, scale and flip
together, so the cost is one resampling pass per batch whatever the number of transforms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    """Ranges of the random transforms; ``Augment.off()`` is the identity."""

    shift: float = 0.1        # max translation, fraction of the image side
    rotate: float = 10.0      # max rotation, degrees
    scale: float = 0.1        # max zoom in or out, fraction
    flip: bool = True         # horizontal flip with probability 1/2
    brightness: float = 0.2   # max additive change, in [0, 1] pixel units
    contrast: float = 0.2     # max multiplicative change around the image mean

    @staticmethod
    def off() -> "Augment":
        return Augment(0.0, 0.0, 0.0, False, 0.0, 0.0)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``x`` [N, 1, H, W] in [0, 1]; returns a new tensor."""
        n = x.shape[0]
        if n == 0:
            return x

        def u(lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
            return torch.empty(n).uniform_(lo, hi, generator=generator)

        if self.shift or self.rotate or self.scale or self.flip:
            ang = u() * math.radians(self.rotate)
            s = 1.0 + u() * self.scale
            fx = torch.where(u(0, 1) < 0.5, -1.0, 1.0) if self.flip else torch.ones(n)
            cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
            theta = torch.stack([
                torch.stack([cos * fx, -sin, u() * 2 * self.shift], 1),
                torch.stack([sin * fx, cos, u() * 2 * self.shift], 1),
            ], 1).to(x.dtype)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.brightness or self.contrast:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            c = (1.0 + u() * self.contrast).view(n, 1, 1, 1)
            b = (u() * self.brightness).view(n, 1, 1, 1)
            x = ((x - mean) * c + mean + b).clamp_(0.0, 1.0)
        return x
