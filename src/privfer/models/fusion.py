"""The default model: a CNN branch and a ResNet branch whose pooled features are concatenated before one head."""
from __future__ import annotations

import torch
from torch import nn

from .cnn import CNNBranch
from .layers import Standardize
from .resnet import ResNetBranch


class Fusion(nn.Module):
    """CNN branch (optionally with spatial-transformer attention) + ResNet branch -> concat -> dropout -> linear."""

    def __init__(self, num_classes: int, cnn_widths: tuple[int, ...] = (16, 32, 64, 128),
                 resnet_widths: tuple[int, ...] = (24, 48, 96), resnet_blocks: int = 1,
                 attention: bool = False, dropout: float = 0.2):
        super().__init__()
        self.scale = Standardize()
        self.cnn = CNNBranch(tuple(cnn_widths), attention)
        self.resnet = ResNetBranch(tuple(resnet_widths), resnet_blocks)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(self.cnn.out_dim + self.resnet.out_dim, num_classes)

    def forward(self, x):
        x = self.scale(x)
        return self.head(self.drop(torch.cat([self.cnn(x), self.resnet(x)], dim=1)))
