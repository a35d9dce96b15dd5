"""Plain CNN branch in the spirit of Deep-Emotion (Minaee & Abdolrashidi 2019), with optional spatial-transformer attention.

Four conv-GN-ReLU stages with 2x2 max pooling between them, global average pooling to a feature
vector. With ``attention=True`` a small localisation network predicts an affine transform
(initialised to identity) that resamples the input before the convolutions, as in Deep-Emotion.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import BranchClassifier, conv_gn


class SpatialTransformer(nn.Module):
    """Deep-Emotion style attention: predict a 2x3 affine matrix from a coarse view and resample the input."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.loc = nn.Sequential(
            nn.AvgPool2d(4),  # 48 -> 12: keep it cheap
            nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(), nn.AdaptiveAvgPool2d(3),
            nn.Flatten(), nn.Linear(16 * 9, hidden), nn.ReLU(),
        )
        self.theta = nn.Linear(hidden, 6)
        nn.init.zeros_(self.theta.weight)
        with torch.no_grad():
            self.theta.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1.0, 0]))

    def forward(self, x):
        theta = self.theta(self.loc(x)).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False, padding_mode="border")


class CNNBranch(nn.Module):
    """Feature extractor: ``widths`` conv stages (each followed by 2x2 max pooling but the last), GAP."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), attention: bool = False):
        super().__init__()
        self.attention = SpatialTransformer() if attention else None
        layers: list[nn.Module] = []
        cin = 1
        for i, w in enumerate(widths):
            layers.append(conv_gn(cin, w))
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = w
        self.features = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, x):
        if self.attention is not None:
            x = self.attention(x)
        return self.features(x).mean(dim=(2, 3))


class CNN(BranchClassifier):
    """The CNN branch alone with a linear head (the seed-style baseline model)."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (16, 32, 64, 128), attention: bool = False,
                 dropout: float = 0.2):
        super().__init__(CNNBranch(tuple(widths), attention), num_classes, dropout)
